// The FP8 KV cache's row format (docs/model.md section 5): each row of head_dim values (one
// token, one kv head, K or V) is stored as E4M3 codes of x * 2^-e plus one signed exponent byte
// e, the smallest with amax |x| <= 448 * 2^e. A power-of-two scale multiplies exactly, so the
// only rounding is E4M3's own (what PyTorch's `.to(torch.float8_e4m3fn)` gives), and one byte
// per 128 values keeps the cache at 1.008 bytes per value: half of bf16.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "core/fp8_e4m3.hpp"

namespace moxin {

// Exponents stay where 2^e and 2^-e are normal f32 numbers.
constexpr int kKvExponentMin = -126;
constexpr int kKvExponentMax = 126;
// A row that held a NaN or an infinity: it reads back as NaN, as the f32 cache would spread it.
constexpr int8_t kKvPoisonedRow = -128;

// The smallest e with amax <= 448 * 2^e (448 = 0.875 * 2^9, so from amax = f * 2^k with
// 0.5 <= f < 1: e = k - 9, one more when f > 0.875), clamped to the range above (an all-zero
// row takes the smallest).
inline int8_t kv_row_exponent(float amax) {
  if (!std::isfinite(amax)) return kKvPoisonedRow;
  if (amax == 0.0f) return static_cast<int8_t>(kKvExponentMin);
  int k = 0;
  const float f = std::frexp(amax, &k);
  const int e = k - 9 + (f > 0.875f ? 1 : 0);
  return static_cast<int8_t>(std::clamp(e, kKvExponentMin, kKvExponentMax));
}

// Writes the n codes of row x and returns its exponent.
inline int8_t quantize_kv_row(const float* x, int64_t n, uint8_t* codes) {
  float amax = 0.0f;
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) {
    finite = finite && std::isfinite(x[i]);
    amax = std::fmax(amax, std::fabs(x[i]));
  }
  const int8_t e = finite ? kv_row_exponent(amax) : kKvPoisonedRow;
  if (e == kKvPoisonedRow) {
    std::memset(codes, 0, static_cast<size_t>(n));
    return e;
  }
  const float unscale = std::ldexp(1.0f, -e);
  for (int64_t i = 0; i < n; ++i) codes[i] = f32_to_e4m3(x[i] * unscale);
  return e;
}

// What a row's codes are multiplied by: 2^e (built from its exponent bits: e is within the
// normal range), or NaN for a poisoned row.
inline float kv_row_scale(int8_t e) {
  return e == kKvPoisonedRow ? std::numeric_limits<float>::quiet_NaN()
                             : std::bit_cast<float>(static_cast<uint32_t>(e + 127) << 23);
}

// out = e4m3(codes) * scale without a table lookup, so that compilers vectorize it: a normal
// code's 4 exponent and 3 mantissa bits are an f32's, rebiased by 120; a subnormal code
// (magnitude < 8) is magnitude * 2^-9. NaN codes (0x7F, 0xFF) are not expected: the quantizer
// never writes them. The CPU kernel tables' widen_e4m3 gives the same bits.
inline void widen_e4m3(const uint8_t* codes, int64_t n, float scale, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t code = codes[i], magnitude = code & 0x7F;
    const uint32_t normal = (magnitude << 20) + (120u << 23);
    const uint32_t subnormal = std::bit_cast<uint32_t>(static_cast<float>(static_cast<int32_t>(magnitude)) * 0x1p-9f);
    const uint32_t is_normal = 0u - static_cast<uint32_t>(magnitude >= 8);  // all ones or zero: no branch
    const uint32_t bits = (normal & is_normal) | (subnormal & ~is_normal) | ((code & 0x80) << 24);
    out[i] = std::bit_cast<float>(bits) * scale;
  }
}

}  // namespace moxin
