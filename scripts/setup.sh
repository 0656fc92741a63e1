#!/usr/bin/env bash
# One command on a fresh Debian/Ubuntu machine: install the build and test dependencies
# (Debian packages, pinned PyPI packages) and build moxin into ./build.
# Set MOXIN_SKIP_DEPS=1 to only build; MOXIN_CUDA=ON|OFF|AUTO to choose the CUDA backend.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(build-essential cmake ninja-build pkg-config nlohmann-json3-dev libcli11-dev
  libjpeg62-turbo-dev libpng-dev libwebp-dev libgif-dev libgtest-dev libgmock-dev
  libbenchmark-dev libcpp-httplib-dev libcurl4-openssl-dev
  clang libclang-rt-dev  # clang + compiler-rt: the libFuzzer targets (scripts/fuzz.sh)
  chromium chromium-driver  # the chat page's browser test (tests/py/test_server_browser.py)
  g++-aarch64-linux-gnu qemu-user)  # the ARM64 cross build and its tests (scripts/arm64.sh)

if [ "${MOXIN_SKIP_DEPS:-0}" != 1 ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q "${missing[@]}"
  fi
  python3 -m pip install -q -r requirements-test.txt
fi

# The CUDA toolkit is often installed outside PATH.
if [ -z "${CUDACXX:-}" ] && ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOXIN_CUDA="${MOXIN_CUDA:-AUTO}"
cmake --build build -j "${MOXIN_JOBS:-2}"
echo "built: build/src/cli/moxin"
