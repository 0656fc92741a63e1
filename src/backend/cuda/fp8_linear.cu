// FP8 E4M3 weights with per-output-row scales (docs/model.md section 5): the decode GEMV that
// reads the codes directly, the exact widening of the codes to bf16 for the cuBLASLt prefill
// path, the per-token quantization of activations for the FP8 tensor-core path, and the
// row/column scaling that follows either GEMM.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/warp_reduce.cuh"

namespace moxin::cuda {
namespace {

constexpr int kGemvWarps = 8;  // weight rows per block: one per warp

// Two E4M3 codes (low byte first) as floats: cvt.rn.f16x2.e4m3x2 on sm_89+, exact.
__device__ __forceinline__ float2 e4m3x2_to_float2(uint32_t two_codes) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two_codes), __NV_E4M3);
  return __half22float2(__half2(h));
}

__device__ __forceinline__ float e4m3_to_float(uint8_t code) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(code), __NV_E4M3)));
}

// One warp per weight row. Vectorized: each lane takes 16 codes (one 16-byte load) per step and
// the matching 16 activations of each of the M rows (four float4 loads each).
template <int M, bool Vectorized>
__global__ void __launch_bounds__(kGemvWarps * 32)
    fp8_gemv_kernel(const float* __restrict__ x, Fp8Matrix w, float* __restrict__ y) {
  wait_for_prior_kernels();
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * kGemvWarps + threadIdx.x / 32;
  if (row >= w.rows) return;
  const int k = w.cols;
  const uint8_t* codes = w.codes + int64_t{row} * k;
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.0f;
  if constexpr (Vectorized) {
    const int chunks = k / 16;
    // Two steps in flight per lane: at K = 4096 a lane makes only 8 steps, so the loads of the
    // next one must be issued before the FMAs of this one wait on theirs.
#pragma unroll 2
    for (int c = lane; c < chunks; c += 32) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(codes) + c);
      const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
      float wv[16];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 lo = e4m3x2_to_float2(words[i] & 0xFFFFu), hi = e4m3x2_to_float2(words[i] >> 16);
        wv[4 * i] = lo.x;
        wv[4 * i + 1] = lo.y;
        wv[4 * i + 2] = hi.x;
        wv[4 * i + 3] = hi.y;
      }
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const float4* xr = reinterpret_cast<const float4*>(x + int64_t{m} * k) + 4 * c;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const float4 xv = __ldg(xr + q);
          acc[m] = fmaf(wv[4 * q], xv.x, acc[m]);
          acc[m] = fmaf(wv[4 * q + 1], xv.y, acc[m]);
          acc[m] = fmaf(wv[4 * q + 2], xv.z, acc[m]);
          acc[m] = fmaf(wv[4 * q + 3], xv.w, acc[m]);
        }
      }
    }
  } else {
    for (int c = lane; c < k; c += 32) {
      const float wv = e4m3_to_float(codes[c]);
#pragma unroll
      for (int m = 0; m < M; ++m) acc[m] = fmaf(wv, __ldg(x + int64_t{m} * k + c), acc[m]);
    }
  }
  const float scale = w.scales[row];
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const float sum = warp_sum(acc[m]);
    if (lane == 0) y[int64_t{m} * w.rows + row] = sum * scale;
  }
}

template <int M>
void launch_gemv(const float* x, const Fp8Matrix& w, float* y, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((w.rows + kGemvWarps - 1) / kGemvWarps);
  const bool vectorized = w.cols % 16 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  if (vectorized)
    launch_kernel("fp8_gemv_kernel", fp8_gemv_kernel<M, true>, blocks, kGemvWarps * 32, 0, stream, x, w, y);
  else
    launch_kernel("fp8_gemv_kernel", fp8_gemv_kernel<M, false>, blocks, kGemvWarps * 32, 0, stream, x, w, y);
}

__global__ void fp8_codes_to_bf16_kernel(const uint8_t* __restrict__ codes, int64_t count,
                                         __nv_bfloat16* __restrict__ out) {
  wait_for_prior_kernels();
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x)
    out[i] = __float2bfloat16(e4m3_to_float(codes[i]));
}

__global__ void scale_rows_columns_kernel(float* __restrict__ y, const float* __restrict__ row_scales,
                                          const float* __restrict__ col_scales, int64_t rows, int64_t cols) {
  wait_for_prior_kernels();
  const int64_t count = rows * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x)
    y[i] *= row_scales ? row_scales[i / cols] * col_scales[i % cols] : col_scales[i % cols];
}

constexpr int kQuantizeThreads = 256;

// One block per row: the row's amax, then its codes (the same f32 division and rounding as
// quant/fp8_quant.cpp does for weights).
__global__ void __launch_bounds__(kQuantizeThreads)
    quantize_rows_e4m3_kernel(const float* __restrict__ x, int k, uint8_t* __restrict__ codes,
                              float* __restrict__ scales) {
  wait_for_prior_kernels();
  __shared__ float warp_amax[kQuantizeThreads / 32];
  const float* xr = x + int64_t{blockIdx.x} * k;
  float amax = 0.0f;
  for (int c = threadIdx.x; c < k; c += kQuantizeThreads) amax = fmaxf(amax, fabsf(xr[c]));
  amax = warp_max(amax);
  if (threadIdx.x % 32 == 0) warp_amax[threadIdx.x / 32] = amax;
  __syncthreads();
  amax = warp_amax[0];
#pragma unroll
  for (int w = 1; w < kQuantizeThreads / 32; ++w) amax = fmaxf(amax, warp_amax[w]);
  float scale = amax / 448.0f;
  if (scale == 0.0f) scale = 1.0f;
  if (threadIdx.x == 0) scales[blockIdx.x] = scale;
  uint8_t* out = codes + int64_t{blockIdx.x} * k;
  for (int c = threadIdx.x; c < k; c += kQuantizeThreads)
    out[c] = __nv_cvt_float_to_fp8(xr[c] / scale, __NV_SATFINITE, __NV_E4M3);
}

}  // namespace

void fp8_gemv(const float* x, int m, const Fp8Matrix& w, float* y, cudaStream_t stream) {
  if (w.rows == 0) return;
  switch (m) {
    case 1: return launch_gemv<1>(x, w, y, stream);
    case 2: return launch_gemv<2>(x, w, y, stream);
    case 3: return launch_gemv<3>(x, w, y, stream);
    case 4: return launch_gemv<4>(x, w, y, stream);
    case 5: return launch_gemv<5>(x, w, y, stream);
    case 6: return launch_gemv<6>(x, w, y, stream);
    case 7: return launch_gemv<7>(x, w, y, stream);
    case 8: return launch_gemv<8>(x, w, y, stream);
    default: fail("[cuda] fp8_gemv: ", m, " rows; at most ", kFp8GemvMaxRows);
  }
}

void fp8_codes_to_bf16(const Fp8Matrix& w, bf16_bits* out, cudaStream_t stream) {
  const int64_t count = int64_t{w.rows} * w.cols;
  if (count == 0) return;
  launch_kernel("fp8_codes_to_bf16_kernel", fp8_codes_to_bf16_kernel, elementwise_blocks(count),
                kElementwiseThreads, 0, stream, w.codes, count, reinterpret_cast<__nv_bfloat16*>(out));
}

void scale_rows_columns(float* y, const float* row_scales, const float* col_scales, int64_t rows, int64_t cols,
                        cudaStream_t stream) {
  const int64_t count = rows * cols;
  if (count == 0) return;
  launch_kernel("scale_rows_columns_kernel", scale_rows_columns_kernel, elementwise_blocks(count),
                kElementwiseThreads, 0, stream, y, row_scales, col_scales, rows, cols);
}

void quantize_rows_e4m3(const float* x, int64_t rows, int k, uint8_t* codes, float* scales, cudaStream_t stream) {
  if (rows == 0) return;
  launch_kernel("quantize_rows_e4m3_kernel", quantize_rows_e4m3_kernel, static_cast<unsigned>(rows),
                kQuantizeThreads, 0, stream, x, k, codes, scales);
}

}  // namespace moxin::cuda
