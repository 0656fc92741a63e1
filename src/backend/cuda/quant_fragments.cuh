// The tensor-core quantized kernels' A fragments (quant_mma.cu, quant_wgmma.cu): code pairs of
// a 32-bit word of MLX affine codes (or E4M3 codes) as exact bf16x2 integers, and their
// dequantization with the row's group scale and bias. The pair order is the one quant_mma.cu's
// file comment describes (4-bit: nibbles p and p + 4; 8-bit: bytes 2p and 2p + 1).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "backend/cuda/attention_mma.cuh"
#include "backend/cuda/e4m3.cuh"
#include "backend/cuda/quant_format.cuh"

namespace moxin::cuda {

__device__ __forceinline__ uint32_t bits_of(__nv_bfloat162 v) {
  return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ __nv_bfloat162 bf16x2_of(uint32_t v) {
  return *reinterpret_cast<const __nv_bfloat162*>(&v);
}

// Code pair p of a word as exact bf16x2 integers. 4-bit: nibbles p and p + 4, built as
// (128 + q) by placing q under the exponent of 128, minus 128. 8-bit: bytes 2p and 2p + 1 via
// f32 (2^23 + q) - 2^23 (bf16 cannot hold 128 + q for q >= 128).
template <int Bits>
__device__ __forceinline__ uint32_t code_pair_bf16(uint32_t word, int p) {
  if constexpr (Bits == 4) {
    // One LOP3 for (q & mask) | 128 (nvcc emitted an AND and an OR, each with its immediate).
    uint32_t biased;
    asm("lop3.b32 %0, %1, 0x000f000f, 0x43004300, 0xea;" : "=r"(biased) : "r"(word >> (4 * p)));
    return bits_of(__hsub2(bf16x2_of(biased), bf16x2_of(0x43004300u)));
  } else {
    const float lo = __uint_as_float(__byte_perm(word, 0x4b000000u, 0x7440 + 2 * p)) - 8388608.0f;
    const float hi = __uint_as_float(__byte_perm(word, 0x4b000000u, 0x7441 + 2 * p)) - 8388608.0f;
    return pack_bf16(lo, hi);
  }
}

// Code pair p (bytes 2p and 2p + 1) of a word of E4M3 codes as bf16x2: exact, every E4M3 value is
// a bf16 value.
__device__ __forceinline__ uint32_t e4m3_pair_bf16(uint32_t word, int p) {
  const float2 v = e4m3x2_to_float2(word >> (16 * p));
  return pack_bf16(v.x, v.y);
}

// The scale/bias of one row's group, ready for dequantize_pair.
struct RowScale {
  uint32_t scale2, bias2;  // bf16 scales: (s, s) and (b, b)
  float2 f32;              // f32 scales
};

template <bool F32Scales>
__device__ __forceinline__ RowScale row_scale(ScaleBiasRaw<F32Scales> raw) {
  RowScale r{};
  if constexpr (F32Scales) {
    r.f32 = raw;
  } else {
    r.scale2 = __byte_perm(raw, 0, 0x1010);
    r.bias2 = __byte_perm(raw, 0, 0x3232);
  }
  return r;
}

template <bool F32Scales>
__device__ __forceinline__ uint32_t dequantize_pair(uint32_t codes, const RowScale& s) {
  if constexpr (F32Scales) {
    return pack_bf16(fmaf(s.f32.x, __uint_as_float(codes << 16), s.f32.y),
                     fmaf(s.f32.x, __uint_as_float(codes & 0xffff0000u), s.f32.y));
  } else {
    return bits_of(__hfma2(bf16x2_of(s.scale2), bf16x2_of(codes), bf16x2_of(s.bias2)));
  }
}

}  // namespace moxin::cuda
