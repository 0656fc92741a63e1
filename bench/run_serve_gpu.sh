#!/usr/bin/env bash
# Load benchmark of `moxin serve` on the GPU machine in one device call: build with CUDA and the
# carried cpp-httplib (tools/device_deps.sh; carry [".deps"]), a fresh full-size random model (made
# while the build runs), the server on CUDA, then bench/serve_load.py at concurrency 1, 8, 32, 64
# (and 128) with a 640x480 JPEG, 16-word questions and 256 generated tokens each (--ignore-eos: a random
# model would stop at random). Logs, the table and the JSON land in $OUT.
#   bench/run_serve_gpu.sh            Env: MOXIN_SERVE_DEADLINE_S (default 280): the whole script's budget.
set -uo pipefail
cd "$(dirname "$0")/.."
began=$(date +%s)
deadline=$((began + ${MOXIN_SERVE_DEADLINE_S:-280}))
out=${OUT:-/tmp/moxin-serve-out}
mkdir -p "$out"
export MOXIN_TOKENIZER_FIXTURE=$PWD/.deps/moxin-vlm.tokenizer.json PYTHONUNBUFFERED=1
model=/tmp/moxin-full
port=8080

# The model and the image need no build: make them beside it.
( [ -f $model/config.json ] || python3 tools/make_test_model.py --preset full --out $model --seed 11 &&
  python3 -c "
from PIL import Image; from skimage import data
Image.fromarray(data.astronaut()).resize((640, 480), Image.BICUBIC).save('/tmp/photo.jpg', quality=90)"
) >"$out/make_full.log" 2>&1 &
maker=$!

MOXIN_DEVICE_TARGETS=moxin tools/device_run.sh build || exit 1
echo "== build done at $(($(date +%s) - began)) s"
wait $maker || { echo "== making the model FAILED:"; tail -5 "$out/make_full.log"; exit 1; }
echo "== model ready at $(($(date +%s) - began)) s"

# The carried httplib and the libraries it needs are found at run time through LD_LIBRARY_PATH.
LD_LIBRARY_PATH=$PWD/.deps/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} build-device/src/cli/moxin serve \
  --model $model --device cuda --port $port --max-batch 128 --max-context 100000 --max-connections-per-client 256 >"$out/server.log" 2>&1 &
server=$!
stop_server() { kill -TERM $server 2>/dev/null && wait $server; echo "== server exit status $?"; }

health() {
  python3 -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=2).status != 200)" \
    2>/dev/null
}
until health; do
  if ! kill -0 $server 2>/dev/null; then echo "== server died:"; tail -20 "$out/server.log"; exit 1; fi
  if [ "$(date +%s)" -ge $((deadline - 30)) ]; then echo "== server not healthy in time:"; tail -20 "$out/server.log"; stop_server; exit 1; fi
  sleep 1
done
echo "== server healthy at $(($(date +%s) - began)) s"
nvidia-smi --query-gpu=memory.used --format=csv,noheader | sed 's/^/== GPU memory used: /'

timeout $((deadline - $(date +%s))) python3 bench/serve_load.py --url http://127.0.0.1:$port --image /tmp/photo.jpg \
  --max-tokens 256 --question-tokens 16 --concurrency 1,8,32,64,128 --ignore-eos --json "$out/serve_load.json" \
  2>&1 | tee "$out/serve_load.txt"
load_status=${PIPESTATUS[0]}
stop_server
tail -5 "$out/server.log"
echo "== total $(($(date +%s) - began)) s"
exit $load_status
