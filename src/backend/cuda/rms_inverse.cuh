// RMSNorm's arithmetic, shared by the norm kernels (norm.cu) and the linears that normalize their
// input on the way in (gemv.cu): one definition of the order in which a row's
// squares are summed, so that a fused kernel gives the same bits as rms_norm followed by the
// linear; and the normalized copy of the input rows such a linear keeps in shared memory.
//
// The order is that of a block of rms_threads(cols) threads: thread t sums the squares of float4
// chunks t, t + T, t + 2T, ... (each chunk's four in order), each warp adds its 32 partial sums
// by a butterfly, and the warps' sums are added in warp order starting from zero. A block of any
// other number of whole warps reproduces it by taking the T threads' roles in turn.
#pragma once

#include <algorithm>
#include <cstdint>

#include "backend/cuda/warp_reduce.cuh"

namespace moxin::cuda {

constexpr int kMaxRmsThreads = 1024;  // one float4 per thread up to 4096 columns

// The threads of the block whose order defines a row's sum (see above): as many as the row has
// float4s (vec4) or elements, rounded up to whole warps, at most kMaxRmsThreads.
inline int rms_threads(int64_t cols, bool vec4) {
  const int64_t items = vec4 ? cols / 4 : cols;
  return static_cast<int>(std::clamp<int64_t>((items + 31) / 32 * 32, 32, kMaxRmsThreads));
}

__device__ __forceinline__ float sum_sq4(float4 v, float sq) {
  sq = fmaf(v.x, v.x, sq);
  sq = fmaf(v.y, v.y, sq);
  sq = fmaf(v.z, v.z, sq);
  return fmaf(v.w, v.w, sq);
}

// RMSNorm's output for four columns: weight * (x * inv_rms), rounded as PyTorch's f32 module does.
__device__ __forceinline__ float4 scale4(float4 w, float4 x, float inv_rms) {
  return make_float4(w.x * (x.x * inv_rms), w.y * (x.y * inv_rms), w.z * (x.z * inv_rms), w.w * (x.w * inv_rms));
}

// The roles of reproduced threads a block of BlockWarps warps takes (see the top of the file).
template <int BlockWarps>
constexpr int rms_roles() {
  return (kMaxRmsThreads / 32 + BlockWarps - 1) / BlockWarps;
}

// The sum's last steps, shared by both paths below: each warp's role sums (a butterfly), then the
// role warps' sums in order from zero; returns 1 / sqrt(total / cols + eps) to every thread.
__device__ __forceinline__ float rms_inverse_of_sums(float* scratch, int role_warps, int cols, float eps) {
  __syncthreads();
  float total = 0.0f;
#pragma unroll 8
  for (int w = 0; w < role_warps; ++w) total += scratch[w];
  __syncthreads();  // scratch may be reused by the caller
  return rsqrtf(total / static_cast<float>(cols) + eps);
}

// Fast path for a row of at most `threads` float4s (a 4096-wide row) in a block of BlockWarps
// warps: v[i] holds float4 threadIdx.x + i * blockDim.x (zero past the row), which is role thread
// (warp + i * BlockWarps) * 32 + lane's only element, loaded by the caller all at once: one
// memory round trip, not one per role, on the critical path of a linear that normalizes its input.
template <int BlockWarps>
__device__ __forceinline__ float rms_inverse_held(const float4 (&v)[rms_roles<BlockWarps>()], int cols, float eps,
                                                  int threads, float* scratch) {
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
#pragma unroll
  for (int i = 0; i < rms_roles<BlockWarps>(); ++i) {
    const float sq = warp_sum(sum_sq4(v[i], 0.0f));  // a role without an element sums to +0, as its thread would
    if (lane == 0 && warp + i * BlockWarps < threads / 32) scratch[warp + i * BlockWarps] = sq;
  }
  return rms_inverse_of_sums(scratch, threads / 32, cols, eps);
}

// 1 / sqrt(mean(row^2) + eps) of a row of cols4 float4s, summed in the order of `threads` threads
// (a multiple of 32; rms_threads(cols, true)) by the calling block, whose size must be a multiple
// of 32. Every thread of the block must call it and gets the result. `scratch` holds
// threads / 32 floats and may be reused once the function has returned.
__device__ __forceinline__ float rms_inverse(const float4* row, int cols4, int cols, float eps, int threads,
                                             float* scratch) {
  const int lane = static_cast<int>(threadIdx.x % 32), warps = static_cast<int>(blockDim.x / 32);
  for (int role_warp = static_cast<int>(threadIdx.x / 32); role_warp < threads / 32; role_warp += warps) {
    float sq = 0.0f;
    for (int c = role_warp * 32 + lane; c < cols4; c += threads) sq = sum_sq4(row[c], sq);
    sq = warp_sum(sq);
    if (lane == 0) scratch[role_warp] = sq;
  }
  return rms_inverse_of_sums(scratch, threads / 32, cols, eps);
}

// Requests the norm weight's lines into L2 while the previous kernel drains (it never changes).
__device__ __forceinline__ void prefetch_norm_weight(const float* weight, int cols) {
  for (int line = static_cast<int>(threadIdx.x); line * 32 < cols; line += static_cast<int>(blockDim.x))
    asm volatile("prefetch.global.L2 [%0];" ::"l"(weight + line * 32));
}

// The norm a kernel applies to its input rows (NormIn): RMSNorm's weight and eps, and the threads
// whose summation order it reproduces (rms_threads).
struct NormParams {
  const float* weight;
  float eps;
  int threads;
};

// normed[m][0..k) = rms_norm(x[m]) for the block's M rows, as rms_norm_kernel rounds it; every
// thread of the block (BlockWarps warps) must call it. A row of up to 4096 columns and its norm
// weight are loaded at once and normalized from registers; a wider one is read twice (the second
// time from L1).
template <int M, int BlockWarps>
__device__ __forceinline__ void stage_normed_rows(const float* x, const NormParams& norm, int k,
                                                  float4* normed, float* scratch) {
  const int k4 = k / 4;
  const float4* g4 = reinterpret_cast<const float4*>(norm.weight);
  constexpr int kRoles = rms_roles<BlockWarps>();
  static_assert(kRoles <= 4, "the row and weight held in registers: blocks of at least 8 warps");
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const float4* row = reinterpret_cast<const float4*>(x + static_cast<size_t>(m) * k);
    if (k4 <= norm.threads) {
      float4 v[kRoles], g[kRoles];
#pragma unroll
      for (int i = 0; i < kRoles; ++i) {
        const int c = static_cast<int>(threadIdx.x) + i * BlockWarps * 32;
        const bool in_row = c < k4;
        v[i] = in_row ? row[c] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        g[i] = in_row ? __ldg(g4 + c) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
      const float inv_rms = rms_inverse_held<BlockWarps>(v, k, norm.eps, norm.threads, scratch);
#pragma unroll
      for (int i = 0; i < kRoles; ++i) {
        const int c = static_cast<int>(threadIdx.x) + i * BlockWarps * 32;
        if (c < k4) normed[m * k4 + c] = scale4(g[i], v[i], inv_rms);
      }
    } else {
      const float inv_rms = rms_inverse(row, k4, k, norm.eps, norm.threads, scratch);
      for (int c = threadIdx.x; c < k4; c += blockDim.x) normed[m * k4 + c] = scale4(__ldg(g4 + c), row[c], inv_rms);
    }
  }
  __syncthreads();
}

}  // namespace moxin::cuda
