#!/usr/bin/env bash
# The CPU kernel paths side by side in one run, for a bench/results row: the CPU model and
# flags, the FMA peaks and read ceiling, the prefill/vision GEMMs and decode GEMVs of every
# kernel table this CPU runs (bench/cpu_ops_bench.cpp BM_Gemm, BM_GemvPath), PyTorch's f32 GEMM
# and timm's encoders on the same shapes (bench/cpu_peer_torch.py; on an AVX-512 CPU once more
# held to AVX2, the avx2 table's peer), and, when a full-size model
# is at $MOXIN_FULL_MODEL, `moxin bench` vision + prefill of 256 tokens + bf16 decode with each SIMD
# table, then int8 and int4 (g64, quantized at load) decode.
#   cmake --build build --target cpu_ops_bench moxin && bench/run_cpu_paths.sh > bench/results/<name>.txt
set -uo pipefail
cd "$(dirname "$0")/.."
model=${MOXIN_FULL_MODEL:-/tmp/moxin-full}
threads=${MOXIN_BENCH_THREADS:-2}

echo "# $(date -u '+%F %T') UTC, commit $(git rev-parse --short HEAD), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core|Socket|L1d|L2|L3)'
grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|fma|f16c|amx|sse4_2)' | tr '\n' ' '
echo
./build/bench/cpu_ops_bench --benchmark_filter='BM_ReadBandwidth|BM_FmaPeak|BM_Gemm|BM_GemvPath' \
  --benchmark_counters_tabular=true --benchmark_min_time=1 2>&1
python3 bench/cpu_peer_torch.py --threads "$threads" 2>&1
# The avx2 table's peer on an AVX-512 CPU: PyTorch held to AVX2 (its own dispatch, oneDNN and MKL),
# as it runs on a CPU without AVX-512.
if grep -qw avx512f /proc/cpuinfo; then
  echo "## PyTorch held to AVX2 (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2)"
  ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
    python3 bench/cpu_peer_torch.py --threads "$threads" 2>&1
fi
if [ -f "$model/config.json" ]; then
  # amx (the default where the CPU has it) differs from avx512 in every bf16 linear (on the tiles);
  # its quantized decode is avx512's.
  if grep -qw amx_bf16 /proc/cpuinfo; then
    echo "## moxin bench, MOXIN_CPU_KERNELS=amx (vision, prefill, bf16 decode)"
    MOXIN_CPU_KERNELS=amx ./build/src/cli/moxin bench --model "$model" --device cpu --threads "$threads" \
      --context 256 --prefill-tokens 256 --decode-steps 4 --runs 1 2>&1
  fi
  # avx512bf16 (opt-in) rounds every bf16 linear's activations as amx does, on AVX-512 BF16 dot products.
  if grep -qw avx512_bf16 /proc/cpuinfo; then
    echo "## moxin bench, MOXIN_CPU_KERNELS=avx512bf16 (vision, prefill, bf16 decode)"
    MOXIN_CPU_KERNELS=avx512bf16 ./build/src/cli/moxin bench --model "$model" --device cpu --threads "$threads" \
      --context 256 --prefill-tokens 256 --decode-steps 4 --runs 1 2>&1
  fi
  for table in avx512 avx2; do
    echo "## moxin bench, MOXIN_CPU_KERNELS=$table"
    MOXIN_CPU_KERNELS=$table ./build/src/cli/moxin bench --model "$model" --device cpu --threads "$threads" \
      --context 256 --prefill-tokens 256 --decode-steps 4 --runs 1 2>&1
    for bits in 8 4; do
      echo "## moxin bench --quantize $bits --group-size 64, MOXIN_CPU_KERNELS=$table (decode)"
      MOXIN_CPU_KERNELS=$table ./build/src/cli/moxin bench --model "$model" --device cpu --threads "$threads" \
        --quantize "$bits" --group-size 64 --context 64 --prefill-tokens 1 --decode-steps 8 --runs 1 \
        --no-vision --quiet 2>&1
    done
  done
else
  echo "(no full-size model at $model: moxin bench skipped; python3 tools/make_test_model.py --preset full --out $model)"
fi
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
