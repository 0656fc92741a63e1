#!/usr/bin/env bash
# The ARM64 (aarch64 Linux) build and its tests, on an x86-64 host: cross-compiles GoogleTest
# (Debian's source package, /usr/src/googletest) and moxin with Debian's aarch64 toolchain
# (cmake/aarch64-linux-gnu.cmake: no optional x86 library leaks in, so JPEG/PNG/GIF/WebP and the
# HTTP server are off there), runs every unit test under qemu-user (the op tests run the NEON
# kernel table against their f64 references), then the tiny-model parity test
# (tests/py/test_parity.py: PyTorch on the host computes the reference, the ARM64 `moxin dump`
# and `moxin generate` run under qemu; images as BMP, the codec the cross build has), and the
# CUDA backend's compile check for an aarch64 host (scripts/arm64_cuda_check.sh).
# Needs g++-aarch64-linux-gnu, qemu-user and libgtest-dev (scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=${MOXIN_ARM64_BUILD:-build-arm64}
jobs=${MOXIN_JOBS:-2}
start=$SECONDS
toolchain=(-DCMAKE_TOOLCHAIN_FILE="$root/cmake/aarch64-linux-gnu.cmake" -DCMAKE_BUILD_TYPE=Release)

if [ ! -f "$build/googletest/lib/libgtest.a" ]; then
  cmake -S /usr/src/googletest -B "$build/googletest-build" -G Ninja "${toolchain[@]}" -DBUILD_GMOCK=OFF \
    -DCMAKE_INSTALL_PREFIX="$root/$build/googletest" > /dev/null
  cmake --build "$build/googletest-build" -j "$jobs" > /dev/null
  cmake --install "$build/googletest-build" > /dev/null
fi
cmake -S . -B "$build" -G Ninja "${toolchain[@]}" -DCMAKE_PREFIX_PATH="$root/$build/googletest" \
  -DMOXIN_CUDA=OFF -DMOXIN_BENCH=OFF > /dev/null
cmake --build "$build" -j "$jobs" --target moxin_unit_tests moxin
echo "[arm64] cross build: $((SECONDS - start)) s"

status=0
tests_start=$SECONDS
ctest --test-dir "$build" --output-on-failure -j "$jobs" || status=1
echo "[arm64] unit tests under qemu: $((SECONDS - tests_start)) s"

# The ARM64 moxin as the parity test runs it: through qemu, the aarch64 sysroot as its root.
wrapper="$build/moxin-qemu"
printf '#!/bin/sh\nexec qemu-aarch64 -L /usr/aarch64-linux-gnu "%s" "$@"\n' "$root/$build/src/cli/moxin" > "$wrapper"
chmod +x "$wrapper"
parity_start=$SECONDS
MOXIN_BIN="$root/$wrapper" MOXIN_PARITY_IMAGE_FORMATS=bmp python3 -m pytest -q -rs tests/py/test_parity.py || status=1
echo "[arm64] parity under qemu: $((SECONDS - parity_start)) s"
scripts/arm64_cuda_check.sh || status=1
echo "[arm64] scripts/arm64.sh in all: $((SECONDS - start)) s"
exit $status
