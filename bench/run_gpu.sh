#!/usr/bin/env bash
# The whole GPU check in one device call (see README "Benchmarks"): build with CUDA, CUDA
# parity against the PyTorch reference on a fresh tiny model, a fresh full-size random model,
# `moxin bench` (vision, prefill, first token from a 640x480 JPEG, then decode at every batch of
# MOXIN_BENCH_BATCHES) and the PyTorch peers (batch 1 and MOXIN_BENCH_BATCH) in the same run, then
# the comparison table; `quant` adds benches (batches 1, 8 and 32) with the decoder
# quantized at load (MOXIN_BENCH_QUANT="bits:group ...") against PyTorch's int8/int4 peers and
# the bf16 numbers of the same run (run it after `bench`). Carry .deps (tools/device_deps.sh).
# `kv` compares the FP8 KV cache with bf16 at a 4k context (bench/compare_kv.py).
#   bench/run_gpu.sh [parity] [bench] [quant] [kv]   (default: parity bench; MOXIN_SKIP_PEER=1: no peers)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/moxin-gpu-out}
mkdir -p "$out"
export MOXIN_TOKENIZER_FIXTURE=$PWD/.deps/moxin-vlm.tokenizer.json PYTHONUNBUFFERED=1
steps=${*:-parity bench}
batch=${MOXIN_BENCH_BATCH:-32}
context=${MOXIN_BENCH_CONTEXT:-1024}

MOXIN_DEVICE_TARGETS=moxin tools/device_run.sh build || exit 1
bin=build-device/src/cli/moxin
model=/tmp/moxin-full

ensure_full_model() {
  [ -f $model/config.json ] || python3 tools/make_test_model.py --preset full --out $model --seed 11 \
    >"$out/make_full.log" 2>&1 || { tail -5 "$out/make_full.log"; exit 1; }
}

for step in $steps; do
  case $step in
    parity)
      python3 -c "import openai" 2>/dev/null ||
        python3 -m pip install --quiet --no-index --find-links .deps/wheels openai >"$out/pip.log" 2>&1 ||
        tail -3 "$out/pip.log"
      # The batch-invariance test serves over HTTP: the carried httplib is found through LD_LIBRARY_PATH.
      LD_LIBRARY_PATH=$PWD/.deps/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} MOXIN_BIN=$bin MOXIN_PARITY_DEVICES=cuda \
        timeout 400 python3 -m pytest -q -s tests/py/test_parity.py tests/py/test_quant.py tests/py/test_quant_fp8.py \
        tests/py/test_batch_invariance.py tests/py/test_kv_cache_fp8.py -k "parity or engine_matches or batch or each_layer" \
        >"$out/parity.log" 2>&1
      echo "== cuda parity: $(tail -1 "$out/parity.log")"
      grep -E "rel err|gap|Error|assert" "$out/parity.log" | head -30
      ;;
    bench)
      ensure_full_model
      python3 -c "
from PIL import Image; from skimage import data
Image.fromarray(data.astronaut()).resize((640, 480), Image.BICUBIC).save('/tmp/photo.jpg', quality=90)"
      # One load: vision, prefill, first token, then the decode sweep over every batch size.
      sweep=${MOXIN_BENCH_BATCHES:-1,2,4,8,16,32,64,128,256}
      largest=${sweep##*,}
      $bin bench --model $model --device cuda --batch "$sweep" --context "$context" --image /tmp/photo.jpg \
        --max-context $(((context + 64) * largest)) --json >"$out/bench.json" 2>"$out/bench.err" || cat "$out/bench.err"
      [ "${MOXIN_SKIP_PEER:-0}" = 1 ] || timeout "${MOXIN_PEER_TIMEOUT:-420}" python3 bench/peer_torch.py --context "$context" --batch "$batch" \
        ${MOXIN_PEER_ARGS:-} >"$out/peer.json" \
        2>"$out/peer.err" || tail -5 "$out/peer.err"
      python3 bench/compare.py "$out/bench.json" "$out/peer.json" | tee "$out/compare.txt"
      ;;
    kv)
      # The FP8 KV cache against bf16 at a long context (issue #11: batch 32 at 4k >= 1.4x).
      ensure_full_model
      kv_context=${MOXIN_KV_CONTEXT:-4096}
      kv_batches=${MOXIN_KV_BATCHES:-1,8,32,64}
      for kv in auto fp8; do
        $bin bench --model $model --device cuda --batch "$kv_batches" --context "$kv_context" --no-vision --runs 1 \
          --kv-cache $kv --max-context $(((kv_context + 64) * ${kv_batches##*,})) --json \
          >"$out/bench_kv_$kv.json" 2>"$out/bench_kv.err" || cat "$out/bench_kv.err"
      done
      python3 bench/compare_kv.py "$out/bench_kv_auto.json" "$out/bench_kv_fp8.json" ${MOXIN_KV_FREE_MB:-} |
        tee "$out/compare_kv.txt"
      ;;
    quant)
      ensure_full_model
      for config in ${MOXIN_BENCH_QUANT:-8:64 4:64 8:128 4:128}; do
        bits=${config%:*} group=${config#*:}
        $bin bench --model $model --device cuda --batch 1,8,32 --context "$context" --no-vision --runs 3 \
          --quantize "$bits" --group-size "$group" --max-context $(((context + 64) * 32)) --json \
          >"$out/bench_q${bits}g${group}.json" 2>"$out/bench_q.err" || cat "$out/bench_q.err"
      done
      python3 bench/compare_quant.py "$out/bench.json" "$out/peer.json" "$out"/bench_q*g*.json |
        tee "$out/compare_quant.txt"
      ;;
  esac
done
