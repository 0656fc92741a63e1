// FP8 E4M3 ("fn": no infinities, NaN = S.1111.111, largest finite 448) to and from f32, rounding
// to nearest even exactly as PyTorch's torch.float8_e4m3fn conversion does for |v| <= 448.
#pragma once

#include <cmath>
#include <cstdint>

namespace moxin {

constexpr float kE4M3Max = 448.0f;
constexpr uint8_t kE4M3NaN = 0x7F;

inline float e4m3_to_f32(uint8_t code) {
  const int exponent = (code >> 3) & 0xF, mantissa = code & 7;
  const float sign = (code & 0x80) ? -1.0f : 1.0f;
  if (exponent == 0xF && mantissa == 7) return std::nanf("");
  // Subnormals are mantissa * 2^-9; normals (8 + mantissa) * 2^(exponent - 10).
  const float magnitude = exponent == 0 ? std::ldexp(static_cast<float>(mantissa), -9)
                                        : std::ldexp(static_cast<float>(8 + mantissa), exponent - 10);
  return sign * magnitude;
}

// Values beyond +-448 saturate to +-448 (the quantizer's scales keep |v| <= 448 anyway).
inline uint8_t f32_to_e4m3(float v) {
  if (std::isnan(v)) return kE4M3NaN;
  const uint8_t sign = std::signbit(v) ? 0x80 : 0;
  const float a = std::fmin(std::fabs(v), kE4M3Max);
  // Below the smallest normal 2^-6 the step is 2^-9: the code is the rounded multiple (8 is the
  // code of 2^-6 itself, so rounding up into the normals needs no special case).
  if (a < 0.015625f) return sign | static_cast<uint8_t>(std::nearbyint(a * 512.0f));
  int exponent = 0;
  std::frexp(a, &exponent);  // a = f * 2^exponent, 0.5 <= f < 1: unbiased exponent - 1
  int e = exponent - 1;
  // Three mantissa bits: a / 2^(e - 3) lies in [8, 16); exact, then rounded to even.
  int q = static_cast<int>(std::nearbyint(std::ldexp(a, 3 - e)));
  if (q == 16) {
    q = 8;
    ++e;
  }
  return sign | static_cast<uint8_t>(((e + 7) << 3) | (q - 8));
}

}  // namespace moxin
