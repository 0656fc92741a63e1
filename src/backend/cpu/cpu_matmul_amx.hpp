// The bf16-weight linears on Intel AMX tiles (bf16 products, f32 sums): cpu_matmul_amx.cpp.
#pragma once

#include <cstdint>

#include "backend/cpu/cpu_kernels.hpp"

namespace moxin::cpu {

// Whether this build, CPU and kernel run AMX bf16 tiles (AMX-TILE, AMX-BF16 and AVX512-BF16, and
// Linux grants the tile state: asked once, for the whole process).
bool amx_bf16_supported();

// y[m * ldy + n] = bias[n] + sum_k bf16(x[m * ldx + k]) * W[n, k] for m < M and the leading
// columns n it returns (W.rows rounded down to a multiple of 32; 0, having written nothing,
// where AMX is not supported, W is not bf16 or has fewer than 32 in-features). The activations
// are rounded to bf16 (nearest even); the products are summed in f32 by the tiles (the inputs
// past the last multiple of 32 by f32 FMAs after them), in an order that does not depend on M.
int64_t matmul_amx_bf16(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const WeightView& w,
                        const float* bias, float* y, int64_t ldy);

// out[m * K + k] = x[m * ldx + k] rounded to bf16 (nearest even, as the tiles round theirs) and
// widened back, for m < M, k < K: the inputs of the f32 GEMM's columns the tiles leave, so that
// they multiply what the tiles would. Splits the rows over the pool's threads (pool may be null).
void round_rows_to_bf16(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, int64_t K, float* out);

}  // namespace moxin::cpu
