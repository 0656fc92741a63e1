// The FP8 KV cache's row format on the GPU (core/fp8_kv.hpp is the host's, and the definition):
// a row of head_dim values is stored as E4M3 codes of x * 2^-e plus one exponent byte e, the
// smallest with amax |x| <= 448 * 2^e, clamped to [-126, 126]; -128 marks a row that held a NaN or
// an infinity (codes 0, read back as NaN). A power-of-two scale multiplies exactly, so a widened
// row is exactly what the CPU's widen_e4m3 gives, in f32 or in bf16.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "backend/cuda/e4m3.cuh"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/pow2.cuh"

namespace moxin::cuda {

constexpr int kKvPoisonedExponent = -128;

// 2^e (e within the normal range), NaN for a poisoned row.
__device__ __forceinline__ float kv_row_scale(int e) {
  return e == kKvPoisonedExponent ? __int_as_float(0x7fc00000) : pow2(e);
}

// The row exponent for a row whose largest magnitude is amax (finite).
__device__ __forceinline__ int kv_row_exponent(float amax) {
  if (amax == 0.0f) return -126;
  int k = 0;
  const float f = frexpf(amax, &k);
  return min(max(k - 9 + (f > 0.875f ? 1 : 0), -126), 126);
}

// x * 2^-e as an E4M3 code, rounded to nearest even (never saturating: |x| <= 448 * 2^e).
__device__ __forceinline__ uint8_t kv_code(float x, int e) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(x * pow2(-e), __NV_SATFINITE, __NV_E4M3));
}

// Element i of a layer's K (or V) as f32, the row's exponent applied where the cache is FP8: the
// generic kernels' loads (any head_dim).
__device__ __forceinline__ float kv_element(const bf16_bits* bf16, const uint8_t* codes, const int8_t* exps,
                                            int head_dim, size_t i) {
  if (codes != nullptr) return e4m3_to_float(codes[i]) * kv_row_scale(exps[i / head_dim]);
  return __uint_as_float(static_cast<uint32_t>(bf16[i]) << 16);
}
__device__ __forceinline__ float k_element(const PagedLayer& c, size_t i) {
  return kv_element(c.k, c.k8, c.k_exp, c.head_dim, i);
}
__device__ __forceinline__ float v_element(const PagedLayer& c, size_t i) {
  return kv_element(c.v, c.v8, c.v_exp, c.head_dim, i);
}

// Eight codes (one 8-byte word) times the row scale as eight bf16 (exact: 4 significant bits and
// an exponent inside bf16's range), packed in pairs.
__device__ __forceinline__ uint4 widen_e4m3x8_bf16(uint2 raw, float scale) {
  const uint32_t words[2] = {raw.x, raw.y};
  uint32_t out[4];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float2 lo = e4m3x2_to_float2(words[i] & 0xFFFFu), hi = e4m3x2_to_float2(words[i] >> 16);
    const __nv_bfloat162 a = __floats2bfloat162_rn(lo.x * scale, lo.y * scale);
    const __nv_bfloat162 b = __floats2bfloat162_rn(hi.x * scale, hi.y * scale);
    out[2 * i] = *reinterpret_cast<const uint32_t*>(&a);
    out[2 * i + 1] = *reinterpret_cast<const uint32_t*>(&b);
  }
  return make_uint4(out[0], out[1], out[2], out[3]);
}

// Eight codes (one 8-byte word) as eight f16 of the codes' own values (the row scale not
// applied: exact, E4M3 fits in f16), packed in pairs: four cvt.rn.f16x2.e4m3x2.
__device__ __forceinline__ uint4 widen_e4m3x8_f16(uint2 raw) {
  const auto pair = [](uint32_t two_codes) {
    const __half2_raw h = e4m3x2_to_half2(two_codes);
    return static_cast<uint32_t>(h.x) | (static_cast<uint32_t>(h.y) << 16);
  };
  return make_uint4(pair(raw.x & 0xFFFFu), pair(raw.x >> 16), pair(raw.y & 0xFFFFu), pair(raw.y >> 16));
}

}  // namespace moxin::cuda
