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


// y[m * ldy + n] = bias[n] + sum_k x[m * ldx + k] * W[n, k] for m < M, n < W.rows: by the
// GEMV up to kernels.gemv_max_rows rows, by the GEMM beyond; bf16 weights on a table with
// bf16_tile_matmul go to its tiles at every row count (activations rounded to bf16). Splits the
// output columns over the pool's threads (pool may be null: this thread only).
// Every output element is computed the same way whatever the thread count.
void matmul(const Kernels& kernels, ThreadPool* pool, int64_t M, const float* x, int64_t ldx,
            const WeightView& w, const float* bias, float* y, int64_t ldy);

}  // namespace moxin::cpu
