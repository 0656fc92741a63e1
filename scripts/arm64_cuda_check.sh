#!/usr/bin/env bash
# Compile check of the CUDA backend for an ARM64 host (GH200 / Grace: aarch64 CPU + H100/H200):
# every src/backend/cuda source compiled to an aarch64 object, the .cu files by nvcc with
# Debian's aarch64 g++ as host compiler (-ccbin), the .cpp files by that g++, warnings as
# errors as in the x86 build. Objects only, nothing linked: the toolkit installed here
# carries the x86_64-linux target only (no sbsa-linux libcudart/libcublasLt to link against),
# and its headers are used for the aarch64 host too (the toolkit's headers are the same files
# for every host target; nvcc looks for them, CCCL's in cccl/ among them, under
# targets/sbsa-linux when -ccbin is aarch64).
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
if [ ! -x "$nvcc" ]; then
  echo "[arm64-cuda] no nvcc: skipped"
  exit 0
fi
cuda_include=$(dirname "$(dirname "$(readlink -f "$nvcc")")")/targets/x86_64-linux/include
out=${MOXIN_ARM64_BUILD:-build-arm64}/cuda-objects
mkdir -p "$out"
start=$SECONDS
compile() {
  local src=$1 obj="$out/$(basename "$1").o"
  case "$src" in
    *.cu) "$nvcc" -ccbin aarch64-linux-gnu-g++ -std=c++20 -O3 -arch=sm_90a --expt-relaxed-constexpr \
            -Werror=all-warnings -I"$cuda_include" -I"$cuda_include/cccl" -Isrc -Iinclude -c "$src" -o "$obj" ;;
    *) aarch64-linux-gnu-g++ -std=c++20 -O3 -Wall -Wextra -Wpedantic -Werror -Wno-missing-field-initializers \
         -isystem "$cuda_include" -isystem "$cuda_include/cccl" -Isrc -Iinclude -c "$src" -o "$obj" ;;
  esac
  # ELF e_machine (2 bytes at offset 18): 183 is EM_AARCH64.
  [ "$(od -An -j18 -N2 -tu2 "$obj" | tr -d ' ')" = 183 ] || { echo "[arm64-cuda] $obj is not an aarch64 object"; return 1; }
}
export -f compile
export nvcc cuda_include out
ls src/backend/cuda/*.cu src/backend/cuda/*.cpp | xargs -P "${MOXIN_JOBS:-2}" -I{} bash -c 'compile {}'
echo "[arm64-cuda] $(ls "$out" | wc -l) CUDA backend sources compiled for an aarch64 host in $((SECONDS - start)) s"
