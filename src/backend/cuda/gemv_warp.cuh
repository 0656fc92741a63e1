// One warp's share of the bf16 decode GEMV (y[M, N] = x[M, K] W[N, K]^T at M <= 8 rows): the
// steps the GEMV kernel (gemv.cu) and the persistent layer-tail kernel (layer_tail.cu) both run,
// so that a row's sum is formed the same way - and gives the same bits - in either.
//
// A warp owns R weight rows (gated: R / 2 gate | up pairs, gate row j with up row n + j); lane L
// takes the 16-byte weight vectors L, L + 32, L + 64, ... of each row and applies each to all M
// activation rows while it sits in registers, U vectors per row requested before any is used.
// The order of a lane's sum (vector L first, then L + 32, ...) does not depend on U, nor the
// butterfly over the warp after it, so every tiling gives a row the same bits.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/bf16_dot.cuh"
#include "backend/cuda/streaming_load.cuh"
#include "backend/cuda/swiglu.cuh"
#include "backend/cuda/warp_reduce.cuh"

namespace moxin::cuda {

constexpr int kGemvLanes = 32;

// Outputs a warp of R weight rows writes.
template <int R, bool Gated>
constexpr int gemv_warp_outputs() {
  static_assert(!Gated || R % 2 == 0, "gated rows come in gate/up pairs");
  return Gated ? R / 2 : R;
}

// The R rows of W (vecs 16-byte vectors each) behind outputs row0.. of n; rows past the end
// repeat the last one (their results are never written).
template <int R, bool Gated>
__device__ __forceinline__ void gemv_warp_rows(const uint4* w, int row0, int n, int vecs, const uint4* (&rows)[R]) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int output = min(row0 + (Gated ? r / 2 : r), n - 1);
    rows[r] = w + static_cast<size_t>(Gated && r % 2 ? n + output : output) * vecs;
  }
}

// Asks L2 for the first U vectors of each row a lane will read (the weights never depend on
// earlier work, so this may run before the inputs are ready).
template <int R, int U>
__device__ __forceinline__ void gemv_warp_prefetch(const uint4* const (&rows)[R], int vecs, int lane) {
#pragma unroll
  for (int u = 0; u < U; ++u)
#pragma unroll
    for (int r = 0; r < R; ++r)
      if (lane + u * kGemvLanes < vecs) asm volatile("prefetch.global.L2 [%0];" ::"l"(rows[r] + lane + u * kGemvLanes));
}

// Activations from global memory through the read-only path, or from a block's copy in shared
// memory.
template <bool Shared>
__device__ __forceinline__ float4 gemv_load_x(const float4* p) {
  if constexpr (Shared)
    return *p;
  else
    return __ldg(p);
}

// Applies one 16-byte weight vector per row (index `vec` along K) to all M activation rows.
template <int M, int R, bool Shared>
__device__ __forceinline__ void gemv_accumulate(const uint4 (&wv)[R], const float4* __restrict__ x4, int x4_stride,
                                                int vec, float (&acc)[M][R]) {
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const float4 a = gemv_load_x<Shared>(x4 + m * x4_stride + 2 * vec);
    const float4 b = gemv_load_x<Shared>(x4 + m * x4_stride + 2 * vec + 1);
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = dot8(wv[r], a, b, acc[m][r]);
  }
}

// acc[m][r] = dot(x row m, W row r), summed over the warp (every lane gets the sums). x4: the M
// activation rows as float4, x4_stride float4s apart.
template <int M, int R, int U, bool Shared>
__device__ __forceinline__ void gemv_warp_dot(const uint4* const (&rows)[R], int vecs, const float4* __restrict__ x4,
                                              int x4_stride, int lane, float (&acc)[M][R]) {
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;
  int vec = lane;
  for (; vec + (U - 1) * kGemvLanes < vecs; vec += U * kGemvLanes) {
    uint4 wv[U][R];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < R; ++r) wv[u][r] = load_once_16(rows[r] + vec + u * kGemvLanes);
#pragma unroll
    for (int u = 0; u < U; ++u) gemv_accumulate<M, R, Shared>(wv[u], x4, x4_stride, vec + u * kGemvLanes, acc);
  }
  for (; vec < vecs; vec += kGemvLanes) {
    uint4 wv[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wv[r] = load_once_16(rows[r] + vec);
    gemv_accumulate<M, R, Shared>(wv, x4, x4_stride, vec, acc);
  }
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = warp_sum(acc[m][r]);
}

// Lane 0 writes the warp's outputs row0.. (of n) for the M rows of y: + bias, then silu(gate) *
// up where Gated (as swiglu_kernel computes it), added into y where AddOut (y + out, as the add
// after the linear rounds it).
template <int M, int R, bool Gated, bool AddOut>
__device__ __forceinline__ void gemv_warp_store(const float (&acc)[M][R], const float* __restrict__ bias, float* y,
                                                int row0, int n, int lane) {
  static_assert(!(Gated && AddOut), "the residual add follows a plain linear");
  if (lane != 0) return;
#pragma unroll
  for (int o = 0; o < gemv_warp_outputs<R, Gated>(); ++o) {
    const int row = row0 + o;
    if (row >= n) break;
    if constexpr (Gated) {
      const float bg = bias ? bias[row] : 0.0f, bu = bias ? bias[n + row] : 0.0f;
#pragma unroll
      for (int m = 0; m < M; ++m)
        y[static_cast<size_t>(m) * n + row] = silu_times(acc[m][2 * o] + bg, acc[m][2 * o + 1] + bu);
    } else {
      const float b = bias ? bias[row] : 0.0f;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float& out = y[static_cast<size_t>(m) * n + row];
        out = AddOut ? out + (acc[m][o] + b) : acc[m][o] + b;
      }
    }
  }
}

}  // namespace moxin::cuda
