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

// 16 codes (one 16-byte load) as floats, in order.
__device__ __forceinline__ void e4m3x16_to_float(uint4 raw, float* out) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 lo = e4m3x2_to_float2(words[i] & 0xFFFFu), hi = e4m3x2_to_float2(words[i] >> 16);
    out[4 * i] = lo.x;
    out[4 * i + 1] = lo.y;
    out[4 * i + 2] = hi.x;
    out[4 * i + 3] = hi.y;
  }
}

}  // namespace moxin::cuda
