// LayerNorm, RMSNorm and the residual add fused with RMSNorm over the last dimension: one
// block per row, f32 except LayerNorm's statistics: two passes (mean, then the centred variance)
// as PyTorch computes them, in f64 as the CPU kernels do. The ViT's rows sit far from zero (a
// mean of ~40 against a spread of ~2 in the op cases): an f32 mean alone is off by up to half an
// ulp of 40, 1e-6 of the output (H200, 2 of 7 shapes over the 1e-6 bound).
#include <cuda_bf16.h>

#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"

namespace moxin::cuda {
namespace {

constexpr int kNormThreads = 256;

// Sum over the block; every thread gets the result. `scratch` holds one T per warp.
template <class T>
__device__ T block_sum(T v, T* scratch) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) scratch[warp] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < kNormThreads / 32; ++w) total += scratch[w];
  __syncthreads();  // scratch is reused by the next call
  return total;
}

// An output element as f32, or rounded to bf16 (RN, as activations_to_bf16 rounds) for a linear
// that multiplies bf16 activations: the linear then skips its own conversion pass.
__device__ __forceinline__ void store(float* y, int i, float v) { y[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16* y, int i, float v) { y[i] = __float2bfloat16_rn(v); }

template <class Out>
__global__ void __launch_bounds__(kNormThreads)
    layer_norm_kernel(const float* x, const float* __restrict__ w, const float* __restrict__ b,
                      float eps, Out* y, int cols) {
  wait_for_prior_kernels();
  __shared__ double scratch[kNormThreads / 32];
  const float* xr = x + static_cast<size_t>(blockIdx.x) * cols;
  Out* yr = y + static_cast<size_t>(blockIdx.x) * cols;
  double sum = 0.0;
  for (int c = threadIdx.x; c < cols; c += kNormThreads) sum += xr[c];
  const double mean = block_sum(sum, scratch) / cols;
  double sq = 0.0;
  for (int c = threadIdx.x; c < cols; c += kNormThreads) {
    const double d = xr[c] - mean;
    sq = fma(d, d, sq);
  }
  const double inv_std = 1.0 / sqrt(block_sum(sq, scratch) / cols + eps);
  for (int c = threadIdx.x; c < cols; c += kNormThreads)
    store(yr, c, static_cast<float>((xr[c] - mean) * inv_std * w[c] + b[c]));
}

// y may alias x (f32 y): each element is read by the thread that writes it, after both reductions.
template <class Out>
__global__ void __launch_bounds__(kNormThreads)
    rms_norm_kernel(const float* x, const float* __restrict__ w, float eps, Out* y, int cols) {
  wait_for_prior_kernels();
  __shared__ float scratch[kNormThreads / 32];
  const float* xr = x + static_cast<size_t>(blockIdx.x) * cols;
  Out* yr = y + static_cast<size_t>(blockIdx.x) * cols;
  float sq = 0.0f;
  for (int c = threadIdx.x; c < cols; c += kNormThreads) sq = fmaf(xr[c], xr[c], sq);
  const float inv_rms = rsqrtf(block_sum(sq, scratch) / cols + eps);
  for (int c = threadIdx.x; c < cols; c += kNormThreads) store(yr, c, w[c] * (xr[c] * inv_rms));
}

// x += y, then out = rms_norm(x): each thread adds, stores and squares its columns in the same
// order as add_kernel followed by rms_norm_kernel, so the results are those two ops' exactly.
template <class Out>
__global__ void __launch_bounds__(kNormThreads)
    add_rms_norm_kernel(float* __restrict__ x, const float* __restrict__ y,
                        const float* __restrict__ w, float eps, Out* __restrict__ out, int cols) {
  wait_for_prior_kernels();
  __shared__ float scratch[kNormThreads / 32];
  float* xr = x + static_cast<size_t>(blockIdx.x) * cols;
  const float* yr = y + static_cast<size_t>(blockIdx.x) * cols;
  Out* outr = out + static_cast<size_t>(blockIdx.x) * cols;
  float sq = 0.0f;
  for (int c = threadIdx.x; c < cols; c += kNormThreads) {
    const float sum = xr[c] + yr[c];
    xr[c] = sum;
    sq = fmaf(sum, sum, sq);
  }
  const float inv_rms = rsqrtf(block_sum(sq, scratch) / cols + eps);
  for (int c = threadIdx.x; c < cols; c += kNormThreads) store(outr, c, w[c] * (xr[c] * inv_rms));
}

}  // namespace

void layer_norm(const float* x, const float* w, const float* b, float eps, Activations y, int64_t rows,
                int64_t cols, cudaStream_t stream) {
  if (rows == 0) return;
  if (y.bf16 != nullptr)
    launch_kernel("layer_norm_kernel", layer_norm_kernel<__nv_bfloat16>, static_cast<unsigned>(rows),
                  kNormThreads, 0, stream, x, w, b, eps, reinterpret_cast<__nv_bfloat16*>(y.bf16),
                  static_cast<int>(cols));
  else
    launch_kernel("layer_norm_kernel", layer_norm_kernel<float>, static_cast<unsigned>(rows), kNormThreads,
                  0, stream, x, w, b, eps, y.f32, static_cast<int>(cols));
}

void rms_norm(const float* x, const float* w, float eps, Activations y, int64_t rows, int64_t cols,
              cudaStream_t stream) {
  if (rows == 0) return;
  if (y.bf16 != nullptr)
    launch_kernel("rms_norm_kernel", rms_norm_kernel<__nv_bfloat16>, static_cast<unsigned>(rows), kNormThreads,
                  0, stream, x, w, eps, reinterpret_cast<__nv_bfloat16*>(y.bf16), static_cast<int>(cols));
  else
    launch_kernel("rms_norm_kernel", rms_norm_kernel<float>, static_cast<unsigned>(rows), kNormThreads, 0,
                  stream, x, w, eps, y.f32, static_cast<int>(cols));
}

void add_rms_norm(float* x, const float* y, const float* w, float eps, Activations out, int64_t rows,
                  int64_t cols, cudaStream_t stream) {
  if (rows == 0) return;
  if (out.bf16 != nullptr)
    launch_kernel("add_rms_norm_kernel", add_rms_norm_kernel<__nv_bfloat16>, static_cast<unsigned>(rows),
                  kNormThreads, 0, stream, x, y, w, eps, reinterpret_cast<__nv_bfloat16*>(out.bf16),
                  static_cast<int>(cols));
  else
    launch_kernel("add_rms_norm_kernel", add_rms_norm_kernel<float>, static_cast<unsigned>(rows),
                  kNormThreads, 0, stream, x, y, w, eps, out.f32, static_cast<int>(cols));
}

}  // namespace moxin::cuda
