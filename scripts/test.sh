#!/usr/bin/env bash
# Runs the whole test suite: the C++ unit tests (GoogleTest via ctest), then the Python tests
# that compare against independent references (PyTorch, timm, transformers, Pillow,
# Hugging Face tokenizers). Seeds are printed; replay with MOXIN_TEST_SEED=<seed>.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
ctest --test-dir build --output-on-failure -j 2 || status=1
python3 -m pytest -q -rs tests/py "$@" || status=1
exit $status
