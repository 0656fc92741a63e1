// E4M3 codes widened on the GPU: cvt.rn.f16x2.e4m3x2 (sm_89+) gives the exact value of two codes
// at once; E4M3 fits in f16 (and in f32 and bf16) without rounding.
#pragma once

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace moxin::cuda {

// Two E4M3 codes (low byte first) as an f16 pair: one cvt.rn.f16x2.e4m3x2.
__device__ __forceinline__ __half2_raw e4m3x2_to_half2(uint32_t two_codes) {
  return __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two_codes), __NV_E4M3);
}

// Two E4M3 codes (low byte first) as floats.
__device__ __forceinline__ float2 e4m3x2_to_float2(uint32_t two_codes) {
  return __half22float2(__half2(e4m3x2_to_half2(two_codes)));
}

__device__ __forceinline__ float e4m3_to_float(uint8_t code) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(code), __NV_E4M3)));
}

// The factor e4m3x4_to_float_scaled leaves out of its values.
constexpr float kE4M3Unscale = 0x1p120f;

// Four codes (a 32-bit word, low byte first) as their values times 2^-120, in integer operations
// only: each code's sign goes to bit 31 and its seven exponent and mantissa bits to bits 26..20,
// which makes the f32 whose exponent field is the code's: 2^(e - 127) (1 + m / 8), the value
// 2^(e - 7) (1 + m / 8) times 2^-120, and for subnormal codes (e = 0) the f32 subnormal
// m 2^-129 = (m 2^-9) 2^-120 alike. The cvt instructions (e4m3x2 -> f16x2 -> f32) issue at a
// quarter of the integer rate on Hopper (16 a clock an SM against 64): at 1.5 of them a code they
// held the FP8 GEMV near 10.7 codes a clock an SM, under what the copy ceiling asks (~11.5 on an
// H100, ~16 on an H200). NaN codes (0x7F, 0xFF) come out finite: prepare_fp8_linear refuses
// weights holding them.
__device__ __forceinline__ void e4m3x4_to_float_scaled(uint32_t w, float* out) {
  out[0] = __uint_as_float(((w << 24) & 0x80000000u) | ((w << 20) & 0x07F00000u));
  out[1] = __uint_as_float(((w << 16) & 0x80000000u) | ((w << 12) & 0x07F00000u));
  out[2] = __uint_as_float(((w << 8) & 0x80000000u) | ((w << 4) & 0x07F00000u));
  out[3] = __uint_as_float((w & 0x80000000u) | ((w >> 4) & 0x07F00000u));
}

}  // namespace moxin::cuda
