// Per-token E4M3 activations (kernels.hpp's E4M3Rows), the input of an FP8 linear on the tensor
// cores: each value rounded to bf16 first (as every prefill GEMM's input), the row's scale
// amax / 448 (1 for an all-zero row), each code the value divided by the scale, rounded to the
// nearest E4M3 and saturated (the f32 division and rounding quant/fp8_quant.cpp applies to
// weights). quantize_rows_e4m3 (fp8_linear.cu) and the ops that write such rows directly (the
// RMSNorms, the swiglu) share these definitions, so a fused op gives the quantization's codes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "backend/cuda/activation_store.cuh"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/warp_reduce.cuh"

namespace moxin::cuda {

__device__ __forceinline__ float round_to_bf16(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
__device__ __forceinline__ float4 round_to_bf16(float4 v) {
  return make_float4(round_to_bf16(v.x), round_to_bf16(v.y), round_to_bf16(v.z), round_to_bf16(v.w));
}

__device__ __forceinline__ float abs_max4(float amax, float4 v) {
  return fmaxf(fmaxf(amax, fmaxf(fabsf(v.x), fabsf(v.y))), fmaxf(fabsf(v.z), fabsf(v.w)));
}

// A row's scale from its amax.
__device__ __forceinline__ float e4m3_row_scale(float amax) {
  const float scale = amax / 448.0f;
  return scale == 0.0f ? 1.0f : scale;
}

__device__ __forceinline__ uint8_t e4m3_code(float x, float scale) {
  return __nv_cvt_float_to_fp8(x / scale, __NV_SATFINITE, __NV_E4M3);
}

__device__ __forceinline__ uint32_t e4m3x4(float4 v, float scale) {
  return uint32_t{e4m3_code(v.x, scale)} | uint32_t{e4m3_code(v.y, scale)} << 8 |
         uint32_t{e4m3_code(v.z, scale)} << 16 | uint32_t{e4m3_code(v.w, scale)} << 24;
}

// The largest of every thread's non-negative v over the block (whole warps, at most 1024
// threads); every thread gets it. Exact whatever the order, so any block size agrees.
__device__ __forceinline__ float block_max(float v) {
  __shared__ float warp_max_of[32];
  v = warp_max(v);
  if (threadIdx.x % 32 == 0) warp_max_of[threadIdx.x / 32] = v;
  __syncthreads();
  float amax = 0.0f;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) amax = fmaxf(amax, warp_max_of[w]);
  __syncthreads();  // warp_max_of is reused by the next call
  return amax;
}

// Row `row` of `out` from the block: value4(c) is the c-th group of four of its cols4 * 4 values.
// The first Held groups of each thread (c = threadIdx.x + i * blockDim.x) are computed once and
// held in registers between the amax and the codes; groups past those are computed again for
// their codes, so value4 must give the same bits each time. Every thread of the block calls it;
// needs 4-byte aligned rows (cols4 * 4 codes each).
template <int Held = 1, class Value4>
__device__ __forceinline__ void write_e4m3_row4(E4M3Rows out, int64_t row, int cols4, Value4&& value4) {
  const int stride = static_cast<int>(blockDim.x);
  float4 held[Held];
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < Held; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * stride;
    held[i] = c < cols4 ? round_to_bf16(value4(c)) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    amax = abs_max4(amax, held[i]);
  }
  for (int c = static_cast<int>(threadIdx.x) + Held * stride; c < cols4; c += stride)
    amax = abs_max4(amax, round_to_bf16(value4(c)));
  const float scale = e4m3_row_scale(block_max(amax));
  uint32_t* codes = reinterpret_cast<uint32_t*>(out.codes) + row * cols4;
#pragma unroll
  for (int i = 0; i < Held; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * stride;
    if (c < cols4) codes[c] = e4m3x4(held[i], scale);
  }
  for (int c = static_cast<int>(threadIdx.x) + Held * stride; c < cols4; c += stride)
    codes[c] = e4m3x4(round_to_bf16(value4(c)), scale);
  if (threadIdx.x == 0) out.scales[row] = scale;
}

// The same one value a column (rows of any width).
template <class Value>
__device__ __forceinline__ void write_e4m3_row(E4M3Rows out, int64_t row, int cols, Value&& value) {
  float amax = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) amax = fmaxf(amax, fabsf(round_to_bf16(value(c))));
  const float scale = e4m3_row_scale(block_max(amax));
  uint8_t* codes = out.codes + row * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) codes[c] = e4m3_code(round_to_bf16(value(c)), scale);
  if (threadIdx.x == 0) out.scales[row] = scale;
}

// Row writers for kernels with a block per row, by output kind: f32 and bf16 store as
// activation_store.cuh rounds (value4 called once per group), E4M3Rows as above.
template <class Value4>
__device__ __forceinline__ void write_row4(float* out, int64_t row, int cols4, Value4&& value4) {
  float4* dst = reinterpret_cast<float4*>(out) + row * cols4;
  for (int c = threadIdx.x; c < cols4; c += blockDim.x) dst[c] = value4(c);
}
template <class Value4>
__device__ __forceinline__ void write_row4(__nv_bfloat16* out, int64_t row, int cols4, Value4&& value4) {
  uint2* dst = reinterpret_cast<uint2*>(out) + row * cols4;
  for (int c = threadIdx.x; c < cols4; c += blockDim.x) {
    const float4 v = value4(c);
    const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
    dst[c] = make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
  }
}
template <class Value4>
__device__ __forceinline__ void write_row4(E4M3Rows out, int64_t row, int cols4, Value4&& value4) {
  write_e4m3_row4(out, row, cols4, value4);
}

template <class Value, class Out>
__device__ __forceinline__ void write_row(Out* out, int64_t row, int cols, Value&& value) {
  for (int c = threadIdx.x; c < cols; c += blockDim.x) store_activation(out, row * cols + c, value(c));
}
template <class Value>
__device__ __forceinline__ void write_row(E4M3Rows out, int64_t row, int cols, Value&& value) {
  write_e4m3_row(out, row, cols, value);
}

// launch(sink) with y's kind: float*, __nv_bfloat16* or E4M3Rows (for kernels built on the row
// writers above).
template <class Launch>
void with_row_activations(Activations y, Launch&& launch) {
  if (y.e4m3.codes != nullptr)
    launch(y.e4m3);
  else
    with_activations(y, launch);
}

}  // namespace moxin::cuda
