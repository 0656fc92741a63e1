// y = x W^T (+ bias) for f32 activations and weights read in place (WeightView): a
// bandwidth-bound GEMV for the few rows of a decode step, a cache-blocked GEMM for prefill
// and vision batches.
#pragma once

#include <cstdint>

#include "backend/cpu/cpu_kernels.hpp"

namespace moxin {
class ThreadPool;
}

namespace moxin::cpu {

// Up to this many activation rows the GEMV kernel (4 x 4 dot-product tiles over rows kept in
// L2) is as fast as the GEMM and needs no weight packing, which dominates at small M; beyond,
// the blocked GEMM wins (measured on Zen 4: equal at M = 256, GEMM 9% ahead at M = 512).
constexpr int64_t kGemvMaxRows = 128;

// y[m * ldy + n] = bias[n] + sum_k x[m * ldx + k] * W[n, k] for m < M, n < W.rows.
// Splits the output columns over the pool's threads (pool may be null: this thread only).
// Every output element is computed the same way whatever the thread count.
void matmul(const Kernels& kernels, ThreadPool* pool, int64_t M, const float* x, int64_t ldx,
            const WeightView& w, const float* bias, float* y, int64_t ldy);

}  // namespace moxin::cpu
