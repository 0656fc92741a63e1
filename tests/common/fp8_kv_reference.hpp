// An independent FP8 KV cache row reference for the tests, written from the format's definition
// (docs/model.md section 5) in double: the E4M3 values from their bit fields, the nearest one
// by search (ties to the even code), and the exponent by trying every candidate in turn.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace moxin::test_common {

// The value of a finite E4M3 code (0x7F and 0xFF are NaN; not used here).
inline double e4m3_reference_value(int code) {
  const int exponent = (code >> 3) & 15, mantissa = code & 7;
  const double magnitude = exponent == 0 ? mantissa / 512.0 : std::ldexp(1.0 + mantissa / 8.0, exponent - 7);
  return (code & 0x80) ? -magnitude : magnitude;
}

// The code whose value is nearest to v (|v| <= 448), the even code on a tie.
inline uint8_t e4m3_reference_code(double v) {
  int best = 0;
  for (int code = 1; code <= 0x7E; ++code) {
    const double d = std::fabs(std::fabs(v) - e4m3_reference_value(code));
    const double best_d = std::fabs(std::fabs(v) - e4m3_reference_value(best));
    if (d < best_d || (d == best_d && code % 2 == 0)) best = code;
  }
  return static_cast<uint8_t>(best | (std::signbit(v) ? 0x80 : 0));
}

// The smallest e in -126..126 with amax <= 448 * 2^e (126 when none is).
inline int kv_reference_exponent(double amax) {
  for (int e = -126; e < 126; ++e)
    if (amax <= std::ldexp(448.0, e)) return e;
  return 126;
}

struct Fp8KvReferenceRow {
  int exponent = 0;
  std::vector<uint8_t> codes;
  std::vector<float> values;  // code values times 2^exponent: what attention reads
};

inline Fp8KvReferenceRow fp8_kv_reference_row(const float* x, int64_t n) {
  double amax = 0;
  // A comparison, not std::fmax: GCC 12 for aarch64 crashes vectorizing an fmax reduction.
  for (int64_t i = 0; i < n; ++i)
    if (std::fabs(static_cast<double>(x[i])) > amax) amax = std::fabs(static_cast<double>(x[i]));
  Fp8KvReferenceRow row;
  row.exponent = kv_reference_exponent(amax);
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t code = e4m3_reference_code(std::ldexp(static_cast<double>(x[i]), -row.exponent));
    row.codes.push_back(code);
    row.values.push_back(static_cast<float>(std::ldexp(e4m3_reference_value(code), row.exponent)));
  }
  return row;
}

}  // namespace moxin::test_common
