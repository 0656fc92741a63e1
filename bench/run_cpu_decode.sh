#!/usr/bin/env bash
# Batch-1 decode share of the bandwidth floor for every SIMD kernel table and weight format
# (bf16, int8 g64, int4 g64), each configuration run $MOXIN_DECODE_REPEATS times (default 2)
# in alternation, so that a drift of the machine's read ceiling shows up as spread instead of
# as a difference between configurations. Use a full-width model that stays in the page cache
# (python3 tools/make_test_model.py --preset full --layers 8 --out /tmp/moxin-w8): the floor
# share does not depend on the layer count, and a model the cache cannot hold times the disk.
#   cmake --build build --target moxin && bench/run_cpu_decode.sh > bench/results/<name>.txt
# MOXIN_DECODE_STEPS (default 16) sets the decode steps per run: the first steps after the
# prefill run slower, so 64 gives a steadier mean. MOXIN_DECODE_CONTEXT (default 256) is the
# cached context; MOXIN_DECODE_KV="auto fp8" (default auto) also runs each with the FP8 KV cache.
# Prints one row per run: table, format, ceiling GB/s (measured after the run), ms/step, GB/step,
# share of the floor, and the median share of each step against a ceiling probed right after it
# (`moxin bench --ceiling-each-step`) with the probes' range: this VM's ceiling changes mode
# within a run (docs/cpu-notes.md), so the paired share is the one to read.
set -uo pipefail
cd "$(dirname "$0")/.."
model=${MOXIN_DECODE_MODEL:-/tmp/moxin-w8}
moxin=${MOXIN_BIN:-./build/src/cli/moxin}
threads=${MOXIN_BENCH_THREADS:-2}
repeats=${MOXIN_DECODE_REPEATS:-2}
# amx (the default where the CPU has it) decodes bf16 on the tiles; its quantized decode is avx512's.
default_tables="avx512 avx2"
grep -qw amx_bf16 /proc/cpuinfo && default_tables="amx $default_tables"
tables=${MOXIN_DECODE_TABLES:-$default_tables}
formats=${MOXIN_DECODE_FORMATS:-bf16 int8 int4}
steps=${MOXIN_DECODE_STEPS:-16}
context=${MOXIN_DECODE_CONTEXT:-256}
kv_caches=${MOXIN_DECODE_KV:-auto}

echo "# $(date -u '+%F %T') UTC, commit $(git rev-parse --short HEAD), model $model, context $context, $steps decode steps, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-7s %-5s %-4s %3s %12s %9s %8s %9s %9s %12s\n' table format kv run "ceiling GB/s" "ms/step" "GB/step" "of floor" \
  "paired" "probes GB/s"
for run in $(seq 1 "$repeats"); do
  for format in $formats; do
    case $format in
      bf16) quantize=() ;;
      int8) quantize=(--quantize 8 --group-size 64) ;;
      int4) quantize=(--quantize 4 --group-size 64) ;;
      *) echo "unknown format $format" >&2; exit 2 ;;
    esac
    for table in $tables; do
      for kv in $kv_caches; do
        out=$(MOXIN_CPU_KERNELS=$table "$moxin" bench --model "$model" --device cpu --threads "$threads" \
          "${quantize[@]}" --kv-cache "$kv" --context "$context" --max-context "$((context + steps + 16))" \
          --prefill-tokens 1 --decode-steps "$steps" --runs 1 --no-vision --ceiling-each-step --quiet 2>&1)
        ceiling=$(sed -n 's/^bandwidth ceiling *\([0-9.]*\) GB\/s.*/\1/p' <<<"$out")
        row=$(awk '$1 == "1" && NF == 8 {print $2, $6, $8}' <<<"$out")
        [ -n "$row" ] || { echo "$out" >&2; exit 1; }
        read -r ms gb share <<<"$row"
        paired=$(sed -n 's/.*median \([0-9.]*%\) of the floor (probes \([0-9.-]*\) GB\/s).*/\1 \2/p' <<<"$out")
        read -r paired_share probes <<<"$paired"
        printf '%-7s %-5s %-4s %3s %12s %9s %8s %9s %9s %12s\n' "$table" "$format" "$kv" "$run" "$ceiling" "$ms" "$gb" \
          "$share" "$paired_share" "$probes"
      done
    done
  done
done
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
