#!/usr/bin/env bash
# The sanitizer job: an ASan + UBSan build (GCC, no CUDA) in build-asan, then the unit tests
# and the command-line and server pytest suites against that binary. Any sanitizer report
# fails the run (UBSan is built not to recover; ASan aborts; leaks are reported at exit).
#   scripts/sanitize.sh [pytest args...]
set -uo pipefail
cd "$(dirname "$0")/.."

# -g1: line tables for the reports' stack traces, at a fraction of -g's compile and link time.
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG" -DMOXIN_CUDA=OFF -DMOXIN_SANITIZE=ON \
  -DMOXIN_BENCH=OFF >/dev/null || exit 1
cmake --build build-asan -j "${MOXIN_JOBS:-2}" --target moxin moxin_unit_tests caption || exit 1  # caption: test_hub (the C++ API by id)

export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:check_initialization_order=1:strict_init_order=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
status=0
ctest --test-dir build-asan --output-on-failure -j 2 || status=1
# The suites that drive the binary with outside input: files, tokenizer input, images, HTTP;
# and the misaligned-checkpoint parity case (UBSan checks every typed load's alignment).
MOXIN_BIN="$PWD/build-asan/src/cli/moxin" python3 -m pytest -q -rs \
  tests/py/test_checkpoint.py tests/py/test_tokenizer_cli.py tests/py/test_image_errors.py \
  tests/py/test_server_errors.py tests/py/test_server_hardening.py tests/py/test_server.py tests/py/test_hub.py \
  "tests/py/test_parity.py::test_odd_header_length_checkpoint" "$@" || status=1
exit $status
