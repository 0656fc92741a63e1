// Device-side reading of the quantized weight format the CUDA backend keeps (kernels.hpp,
// QuantMatrix): the interleaved scale/bias pairs, and the prefill dequantizer's formula
// (bf16 of the f32 fma; quant_mma.cu rounds the same weights, see its file comment).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "backend/cuda/kernels.hpp"

namespace moxin::cuda {

// How one scale/bias pair is stored: bf16 pair in a word (scale in the low half) or float2.
template <bool F32Scales>
using ScaleBiasRaw = std::conditional_t<F32Scales, float2, uint32_t>;

template <bool F32Scales>
__device__ __forceinline__ ScaleBiasRaw<F32Scales> load_scale_bias(const void* pairs, int64_t i) {
  return __ldg(static_cast<const ScaleBiasRaw<F32Scales>*>(pairs) + i);
}

// (scale, bias) as f32.
__device__ __forceinline__ float2 unpack_scale_bias(float2 raw) { return raw; }
__device__ __forceinline__ float2 unpack_scale_bias(uint32_t raw) {
  return make_float2(__uint_as_float(raw << 16), __uint_as_float(raw & 0xffff0000u));
}

// The weight a code (< 2^23) stands for, in f32: scale * code + bias with one rounding. The
// code becomes a float exactly as (2^23 + code) - 2^23: a logic op and an add, where an
// integer conversion instruction would run at a quarter of the rate.
__device__ __forceinline__ float dequantize_f32(float2 scale_bias, uint32_t code) {
  const float q = __uint_as_float(0x4b000000u | code) - 8388608.0f;
  return fmaf(scale_bias.x, q, scale_bias.y);
}

// Two weights rounded to bf16 (RNE) as a bf16x2 word, the first in the low half.
__device__ __forceinline__ uint32_t dequantize_bf16x2(float2 scale_bias, uint32_t code_lo,
                                                      uint32_t code_hi) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(dequantize_f32(scale_bias, code_lo),
                                                    dequantize_f32(scale_bias, code_hi));
  return *reinterpret_cast<const uint32_t*>(&pair);
}

}  // namespace moxin::cuda
