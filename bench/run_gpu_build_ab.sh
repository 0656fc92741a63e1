#!/usr/bin/env bash
# A/B of a compile-time switch in one device call: moxin built twice (build-device as the tree is,
# build-device-b with MOXIN_AB_CUDA_FLAGS added to nvcc's flags), then `moxin bench` on the
# full-size random model with each build, alternated over MOXIN_AB_ROUNDS rounds and printed one
# line a run (tok/s and share of the same run's copy ceiling per batch). Each argument is an
# environment to run both builds in (NAME=VALUE words; "" for the defaults), so a switch can be
# crossed with runtime ones. Carry .deps (tools/device_deps.sh); makes /tmp/moxin-full if missing.
#   MOXIN_AB_CUDA_FLAGS=-DMOXIN_SWITCH=1 bench/run_gpu_build_ab.sh "" "MOXIN_CUDA_PDL=1"  (a #ifdef switch in the source)
# Env: MOXIN_AB_BATCHES (default 1,8,32), MOXIN_AB_ARGS (extra bench flags; default
#      "--no-vision --prefill-tokens 16"), MOXIN_AB_ROUNDS (default 2).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/moxin-gpu-out}
mkdir -p "$out"
: "${MOXIN_AB_CUDA_FLAGS:?set MOXIN_AB_CUDA_FLAGS to the nvcc flags of build B}"
model=/tmp/moxin-full
batches=${MOXIN_AB_BATCHES:-1,8,32}
largest=${batches##*,}
[ -f $model/config.json ] || python3 tools/make_test_model.py --preset full --out $model --seed 11 \
  >"$out/make_full.log" 2>&1 &
maker=$!
MOXIN_DEVICE_TARGETS=moxin tools/device_run.sh build || exit 1
MOXIN_BUILD_DIR=build-device-b MOXIN_CUDA_FLAGS="$MOXIN_AB_CUDA_FLAGS" MOXIN_DEVICE_TARGETS=moxin \
  tools/device_run.sh build || exit 1
wait $maker || { tail -5 "$out/make_full.log"; exit 1; }

for round in $(seq 1 "${MOXIN_AB_ROUNDS:-2}"); do
  for vars in "$@"; do
    for build in build-device build-device-b; do
      name="$out/ab_r${round}_${build}_$(echo "${vars:-defaults}" | tr -c 'A-Za-z0-9_\n' '_').json"
      # shellcheck disable=SC2086  # vars is a list of NAME=VALUE words
      env $vars "$build/src/cli/moxin" bench --model $model --device cuda --batch "$batches" --context 1024 \
        --max-context $((1088 * largest)) ${MOXIN_AB_ARGS:---no-vision --prefill-tokens 16} --json \
        >"$name" 2>"$name.err" || { tail -3 "$name.err"; continue; }
      python3 - "$name" "round $round, $build, ${vars:-defaults}" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]}: copy {d['bandwidth_ceiling_gbps']:.0f} GB/s |", " | ".join(
    f"b{r['batch']} {r['decode_step_ms']:.4f} ms {r['decode_tok_s_total']:.1f} tok/s {100 * r['decode_share_of_ceiling']:.1f}%"
    for r in d["decode"]))
PY
    done
  done
done
