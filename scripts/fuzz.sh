#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, clang + ASan + UBSan) into build-fuzz and runs each
# for SECONDS (default 60) from a copy of its in-tree seed corpus, so the tree is never written.
# Exits non-zero if any target finds a crash, a leak, a sanitizer report or a timeout; the
# reproducer is kept in build-fuzz/findings/<target>/ (replay: build-fuzz/tests/fuzz/<target> FILE).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true

if [ ! -f build-fuzz/build.ninja ]; then
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG" -DMOXIN_CUDA=OFF \
    -DMOXIN_FUZZ=ON -DMOXIN_TESTS=OFF -DMOXIN_BENCH=OFF >/dev/null
fi
cmake --build build-fuzz -j "${MOXIN_JOBS:-2}" --target moxin_fuzz_targets

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for source in tests/fuzz/corpus/*/; do targets+=("fuzz_$(basename "$source")"); done
fi

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:symbolize=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
status=0
for target in "${targets[@]}"; do
  seeds="tests/fuzz/corpus/${target#fuzz_}"
  work="build-fuzz/corpus/$target"
  findings="build-fuzz/findings/$target"
  rm -rf "$work" && mkdir -p "$work" "$findings"
  cp "$seeds"/* "$work"/
  echo "[fuzz] $target: ${seconds} s"
  # -max_len: the tokenizer seeds are ~6 KB (a whole tokenizer.json); the others stay small.
  if ! "build-fuzz/tests/fuzz/$target" "$work" -max_total_time="$seconds" -max_len=16384 -timeout=20 \
      -rss_limit_mb=2560 -artifact_prefix="$findings/" -print_final_stats=1 >"build-fuzz/$target.log" 2>&1; then
    echo "[fuzz] $target FAILED; log build-fuzz/$target.log, reproducer in $findings/" >&2
    tail -n 40 "build-fuzz/$target.log" >&2
    status=1
  else
    grep -E "^stat::number_of_executed_units|^stat::new_units_added" "build-fuzz/$target.log" | tr '\n' ' '
    echo
  fi
done
exit $status
