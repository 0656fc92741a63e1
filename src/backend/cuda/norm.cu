// LayerNorm, RMSNorm and the residual add fused with RMSNorm over the last dimension: one
// block per row, f32 except LayerNorm's statistics: two passes (mean, then the centred variance)
// as PyTorch computes them, in f64 as the CPU kernels do. The ViT's rows sit far from zero (a
// mean of ~40 against a spread of ~2 in the op cases): an f32 mean alone is off by up to half an
// ulp of 40, 1e-6 of the output (H200, 2 of 7 shapes over the 1e-6 bound).
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "backend/cuda/activation_store.cuh"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/e4m3_rows.cuh"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/residual_add.cuh"
#include "backend/cuda/rms_inverse.cuh"

namespace moxin::cuda {
namespace {

constexpr int kNormThreads = 256;      // LayerNorm (the ViT's rows, 1024-1152 wide)

// Sum over the block (any multiple of 32 threads); every thread gets the result. `scratch`
// holds one T per warp.
template <class T>
__device__ T block_sum(T v, T* scratch) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) scratch[warp] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += scratch[w];
  __syncthreads();  // scratch is reused by the next call
  return total;
}

// The rest of a LayerNorm row once each thread has summed its columns (thread t: t, t + 256, ...)
// into `sum`: the mean, the centred variance in a second pass, the output. Shared by layer_norm and
// add_layer_norm so that both round alike.
template <class Out>
__device__ __forceinline__ void layer_norm_finish(const float* xr, const float* __restrict__ w,
                                                  const float* __restrict__ b, float eps, Out* yr, int cols,
                                                  double sum, double* scratch) {
  const double mean = block_sum(sum, scratch) / cols;
  double sq = 0.0;
  for (int c = threadIdx.x; c < cols; c += kNormThreads) {
    const double d = xr[c] - mean;
    sq = fma(d, d, sq);
  }
  const double inv_std = 1.0 / sqrt(block_sum(sq, scratch) / cols + eps);
  for (int c = threadIdx.x; c < cols; c += kNormThreads)
    store_activation(yr, c, static_cast<float>((xr[c] - mean) * inv_std * w[c] + b[c]));
}

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
  layer_norm_finish(xr, w, b, eps, yr, cols, sum, scratch);
}

// x += y (x += scale * y with a LayerScale), then out = layer_norm(x): the ViT's residual step
// and the next norm in one pass, rounded as add / add_scaled then layer_norm.
template <class Out>
__global__ void __launch_bounds__(kNormThreads)
    add_layer_norm_kernel(float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ scale,
                          const float* __restrict__ w, const float* __restrict__ b, float eps,
                          Out* __restrict__ out, int cols) {
  wait_for_prior_kernels();
  __shared__ double scratch[kNormThreads / 32];
  float* xr = x + static_cast<size_t>(blockIdx.x) * cols;
  const float* yr = y + static_cast<size_t>(blockIdx.x) * cols;
  double sum = 0.0;
  for (int c = threadIdx.x; c < cols; c += kNormThreads) {
    const float v = scale != nullptr ? residual_scaled(xr[c], scale[c], yr[c]) : xr[c] + yr[c];
    xr[c] = v;
    sum += v;
  }
  layer_norm_finish(xr, w, b, eps, out + static_cast<size_t>(blockIdx.x) * cols, cols, sum, scratch);
}

// RMSNorm rows are a decode step's critical path at batch 1: one block per row, as many threads
// as the row has float4s (up to 1024), so that a lone 4096-wide row costs one load round trip
// instead of a 256-thread loop of 16 (~11 us -> a few under ncu). Rows of a width that is not a
// multiple of 4 (tiny test models) go one element per thread and step. Thread t takes chunks
// t, t + blockDim, ... and the elements of a chunk in order, in rms_norm and add_rms_norm alike,
// so that add_rms_norm rounds exactly as add followed by rms_norm (rms_inverse.cuh defines the
// order; the linears that normalize their input reproduce it). The output (Sink: float*,
// __nv_bfloat16* or E4M3Rows) is written by e4m3_rows.cuh's row writers.
// y may alias x (f32 y): each element is read by the thread that writes it, after the reduction.
template <class Sink, bool Vec4>
__global__ void __launch_bounds__(kMaxRmsThreads)
    rms_norm_kernel(const float* x, const float* __restrict__ w, float eps, Sink y, int cols) {
  wait_for_prior_kernels();
  __shared__ float scratch[kMaxRmsThreads / 32];
  const float* xr = x + static_cast<size_t>(blockIdx.x) * cols;
  if constexpr (Vec4) {
    const float4* x4 = reinterpret_cast<const float4*>(xr);
    const float inv_rms = rms_inverse(x4, cols / 4, cols, eps, static_cast<int>(blockDim.x), scratch);
    const float4* w4 = reinterpret_cast<const float4*>(w);
    write_row4(y, blockIdx.x, cols / 4, [&](int c) { return scale4(w4[c], x4[c], inv_rms); });
  } else {
    float sq = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) sq = fmaf(xr[c], xr[c], sq);
    const float inv_rms = rsqrtf(block_sum(sq, scratch) / cols + eps);
    write_row(y, blockIdx.x, cols, [&](int c) { return w[c] * (xr[c] * inv_rms); });
  }
}

// x += y, then out = rms_norm(x). Scaled: each y value times row_scales[row] * col_scales[col]
// first (an FP8 GEMM's products, as scale_rows_columns would have scaled them: the same bits).
template <class Sink, bool Vec4, bool Scaled>
__global__ void __launch_bounds__(kMaxRmsThreads)
    add_rms_norm_kernel(float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ row_scales,
                        const float* __restrict__ col_scales, const float* __restrict__ w, float eps, Sink out,
                        int cols) {
  wait_for_prior_kernels();
  __shared__ float scratch[kMaxRmsThreads / 32];
  float* xr = x + static_cast<size_t>(blockIdx.x) * cols;
  const float* yr = y + static_cast<size_t>(blockIdx.x) * cols;
  const float row = Scaled ? row_scales[blockIdx.x] : 1.0f;
  float sq = 0.0f;
  if constexpr (Vec4) {
    float4* x4 = reinterpret_cast<float4*>(xr);
    const float4* y4 = reinterpret_cast<const float4*>(yr);
    for (int c = threadIdx.x; c < cols / 4; c += blockDim.x) {
      const float4 a = x4[c];
      float4 b = y4[c];
      if constexpr (Scaled) {
        const float4 s = reinterpret_cast<const float4*>(col_scales)[c];
        // Rounded apart from the add (no FMA contraction): the bits of the scale pass, then the add.
        b = make_float4(__fmul_rn(b.x, row * s.x), __fmul_rn(b.y, row * s.y), __fmul_rn(b.z, row * s.z),
                        __fmul_rn(b.w, row * s.w));
      }
      const float4 sum = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
      x4[c] = sum;
      sq = sum_sq4(sum, sq);
    }
    const float inv_rms = rsqrtf(block_sum(sq, scratch) / cols + eps);
    const float4* w4 = reinterpret_cast<const float4*>(w);
    write_row4(out, blockIdx.x, cols / 4, [&](int c) { return scale4(w4[c], x4[c], inv_rms); });
  } else {
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
      const float sum = xr[c] + (Scaled ? __fmul_rn(yr[c], row * col_scales[c]) : yr[c]);
      xr[c] = sum;
      sq = fmaf(sum, sum, sq);
    }
    const float inv_rms = rsqrtf(block_sum(sq, scratch) / cols + eps);
    write_row(out, blockIdx.x, cols, [&](int c) { return w[c] * (xr[c] * inv_rms); });
  }
}

bool rms_vec4(int64_t cols, std::initializer_list<const void*> pointers) {
  if (cols % 4 != 0) return false;
  for (const void* p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

template <class Sink, bool Vec4>
void launch_rms(const float* x, const float* w, float eps, Sink y, int64_t rows, int64_t cols, cudaStream_t stream) {
  launch_kernel("rms_norm_kernel", rms_norm_kernel<Sink, Vec4>, static_cast<unsigned>(rows), rms_threads(cols, Vec4),
                0, stream, x, w, eps, y, static_cast<int>(cols));
}

template <class Sink, bool Vec4>
void launch_add_rms(float* x, const float* y, const float* row_scales, const float* col_scales, const float* w,
                    float eps, Sink out, int64_t rows, int64_t cols, cudaStream_t stream) {
  const auto launch = [&]<bool Scaled>() {
    launch_kernel("add_rms_norm_kernel", add_rms_norm_kernel<Sink, Vec4, Scaled>, static_cast<unsigned>(rows),
                  rms_threads(cols, Vec4), 0, stream, x, y, row_scales, col_scales, w, eps, out,
                  static_cast<int>(cols));
  };
  if (col_scales != nullptr)
    launch.template operator()<true>();
  else
    launch.template operator()<false>();
}

}  // namespace

void layer_norm(const float* x, const float* w, const float* b, float eps, Activations y, int64_t rows,
                int64_t cols, cudaStream_t stream) {
  if (rows == 0) return;
  with_activations(y, [&]<class Out>(Out* out) {
    launch_kernel("layer_norm_kernel", layer_norm_kernel<Out>, static_cast<unsigned>(rows), kNormThreads, 0, stream,
                  x, w, b, eps, out, static_cast<int>(cols));
  });
}

void add_layer_norm(float* x, const float* y, const float* scale, const float* w, const float* b, float eps,
                    Activations out, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows == 0) return;
  with_activations(out, [&]<class Out>(Out* normed) {
    launch_kernel("add_layer_norm_kernel", add_layer_norm_kernel<Out>, static_cast<unsigned>(rows), kNormThreads, 0,
                  stream, x, y, scale, w, b, eps, normed, static_cast<int>(cols));
  });
}

void rms_norm(const float* x, const float* w, float eps, Activations y, int64_t rows, int64_t cols,
              cudaStream_t stream) {
  if (rows == 0) return;
  const bool vec4 = rms_vec4(cols, {x, w, y.f32, y.bf16, y.e4m3.codes});
  with_row_activations(y, [&]<class Sink>(Sink out) {
    vec4 ? launch_rms<Sink, true>(x, w, eps, out, rows, cols, stream)
         : launch_rms<Sink, false>(x, w, eps, out, rows, cols, stream);
  });
}

void add_rms_norm(float* x, const float* y, const float* w, float eps, Activations out, int64_t rows,
                  int64_t cols, cudaStream_t stream, const float* row_scales, const float* col_scales) {
  if (rows == 0) return;
  const bool vec4 = rms_vec4(cols, {x, y, w, out.f32, out.bf16, out.e4m3.codes, col_scales});
  with_row_activations(out, [&]<class Sink>(Sink normed) {
    vec4 ? launch_add_rms<Sink, true>(x, y, row_scales, col_scales, w, eps, normed, rows, cols, stream)
         : launch_add_rms<Sink, false>(x, y, row_scales, col_scales, w, eps, normed, rows, cols, stream);
  });
}

}  // namespace moxin::cuda
