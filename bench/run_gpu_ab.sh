#!/usr/bin/env bash
# A/B of runtime switches in one device call: `moxin bench` on the full-size random model once per
# environment given, alternated over MOXIN_AB_ROUNDS rounds, each printed with bench/compare.py
# (no peers). Run it after `bench/run_gpu.sh bench` in the same call (it reuses that build, the
# model and /tmp/photo.jpg).
#   bench/run_gpu_ab.sh "MOXIN_CUBLASLT_TUNE=0 MOXIN_CUDA_PDL=0" ""        ("" = the defaults)
# Env: MOXIN_AB_BATCHES (default 1,8,16,32,128), MOXIN_AB_ARGS (extra bench flags, e.g. --no-vision),
#      MOXIN_AB_ROUNDS (default 1).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/moxin-gpu-out}
bin=build-device/src/cli/moxin
model=/tmp/moxin-full
batches=${MOXIN_AB_BATCHES:-1,8,16,32,128}
largest=${batches##*,}
image_args=()
[ -f /tmp/photo.jpg ] && image_args=(--image /tmp/photo.jpg)
for round in $(seq 1 "${MOXIN_AB_ROUNDS:-1}"); do
  variant=0
  for vars in "$@"; do
    variant=$((variant + 1))
    name="$out/ab_r${round}_v${variant}.json"
    # shellcheck disable=SC2086  # vars is a list of NAME=VALUE words
    env $vars "$bin" bench --model "$model" --device cuda --batch "$batches" --context 1024 "${image_args[@]}" \
      --max-context $((1088 * largest)) ${MOXIN_AB_ARGS:-} --json >"$name" 2>"$name.err" || tail -3 "$name.err"
    echo "== round $round, variant $variant: ${vars:-defaults}"
    python3 bench/compare.py "$name" /dev/null | grep -vE "^\(missing|^device"
  done
done
