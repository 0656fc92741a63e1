#!/usr/bin/env bash
# Runs the whole test suite: the C++ unit tests (GoogleTest via ctest), then the Python tests
# that compare against independent references (PyTorch, timm, transformers, Pillow,
# Hugging Face tokenizers). Seeds are printed; replay with MOXIN_TEST_SEED=<seed>.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
ctest --test-dir build --output-on-failure -j 2 || status=1
# tests/py/test_python_package.py tests the installed `moxin` package: build and install it from
# this tree (incremental: its build directory build-py/ persists). CPU only, as the tests run:
# the main build already compiles the CUDA backend; MOXIN_PYTHON_CUDA=ON|AUTO builds it here too.
MOXIN_CUDA="${MOXIN_PYTHON_CUDA:-OFF}" python3 -m pip install -q --root-user-action=ignore \
  --no-build-isolation . || status=1
python3 -m pytest -q -rs tests/py "$@" || status=1
exit $status
