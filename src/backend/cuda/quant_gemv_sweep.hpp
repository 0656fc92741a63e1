// The benchmark's handle on the 4-bit GEMV kernels of quant_gemv.cu and the tensor-core kernel of
// quant_mma.cu (kernels.hpp holds the path the backend takes): one explicit tiling per call, to
// place the defaults.
#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/kernels.hpp"

namespace moxin::cuda {

// y = x W^T for m (1 or 2) activation rows and 4-bit W with bf16 scales. `staged`: the kernel
// with x staged in shared memory (rows_per_warp 2 or 4, k_split 1 or 2); otherwise the
// lane-per-word kernel at m = 2 (4 rows per warp, k_split 1 or 2; quant_gemv_variant covers
// m = 1). Returns false when that variant is not compiled or cannot take the shape.
bool quant_gemv4_variant(bool staged, int m, int rows_per_warp, int k_split, const float* x,
                         const QuantMatrix& w, float* y, cudaStream_t stream);

// quant_mma with `token_tiles` tiles of 8 tokens (1, 2, 4 or 8; at least m / 8) and `phases`
// warps of a block on the same rows, each on its own K blocks (the engine's 2; 1 or 4 with bf16
// scales). Returns false when that variant is not compiled or cannot take the shape.
bool quant_mma_variant(int token_tiles, int phases, const float* x, int m, const QuantMatrix& w,
                       bf16_bits* x_scratch, float* y, cudaStream_t stream);

}  // namespace moxin::cuda
