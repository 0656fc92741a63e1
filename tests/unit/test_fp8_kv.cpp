// The FP8 KV cache's row format (src/core/fp8_kv.hpp) against the independent reference in
// fp8_kv_reference.hpp: exponents, codes (every magnitude the format has, exact midpoints,
// values far below the row's largest) and the values read back.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "core/fp8_kv.hpp"
#include "fp8_kv_reference.hpp"
#include "test_cpu_common.hpp"

namespace moxin::cpu_test {
namespace {

using test_common::e4m3_reference_value;
using test_common::fp8_kv_reference_row;
using test_common::kv_reference_exponent;

TEST(Fp8KvRow, ExponentIsTheSmallestThatHoldsTheRow) {
  Random rng(test_seed());
  std::vector<float> amaxes = {0.0f, 448.0f, std::nextafter(448.0f, 1e9f), 224.0f, 1.0f, 0.875f, 0.8750001f,
                               std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min(), 1e-30f};
  for (int k = -40; k <= 40; ++k) {
    amaxes.push_back(std::ldexp(448.0f, k));
    amaxes.push_back(std::nextafter(std::ldexp(448.0f, k), 1e30f));
  }
  for (int i = 0; i < 2000; ++i)
    amaxes.push_back(std::ldexp(rng.uniform(1, 0.5f, 1.0f)[0], static_cast<int>(rng.integer(-140, 127))));
  for (float amax : amaxes)
    EXPECT_EQ(kv_row_exponent(amax), kv_reference_exponent(amax)) << "amax " << amax;
  EXPECT_EQ(kv_row_exponent(std::numeric_limits<float>::infinity()), kKvPoisonedRow);
  EXPECT_EQ(kv_row_exponent(std::nanf("")), kKvPoisonedRow);
}

// Rows of random scale whose values span many binades below their largest, plus values placed
// exactly on rounding midpoints and on every E4M3 magnitude.
std::vector<float> random_row(Random& rng, int64_t n) {
  const int e = static_cast<int>(rng.integer(-100, 100));
  std::vector<float> row(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const float magnitude = std::ldexp(rng.uniform(1, 0.5f, 1.0f)[0], static_cast<int>(rng.integer(-24, 8)));
    row[i] = std::ldexp(rng.integer(0, 1) ? magnitude : -magnitude, e);
  }
  // The largest at 448 * 2^e exactly or just above it; a midpoint of two codes; a code's value.
  row[0] = rng.integer(0, 1) ? std::ldexp(448.0f, e) : std::nextafter(std::ldexp(448.0f, e), 1e30f);
  const int code = static_cast<int>(rng.integer(0, 0x7D));
  row[1] = static_cast<float>(std::ldexp((e4m3_reference_value(code) + e4m3_reference_value(code + 1)) / 2, e));
  row[2] = static_cast<float>(-std::ldexp(e4m3_reference_value(static_cast<int>(rng.integer(0, 0x7E))), e));
  return row;
}

TEST(Fp8KvRow, CodesAreTheNearestE4M3AndReadBackExactly) {
  Random rng(test_seed());
  for (int trial = 0; trial < 300; ++trial) {
    const int64_t n = rng.integer(1, 200);
    std::vector<float> row = random_row(rng, std::max<int64_t>(n, 3));
    const int64_t len = static_cast<int64_t>(row.size());
    const auto ref = fp8_kv_reference_row(row.data(), len);
    std::vector<uint8_t> codes(static_cast<size_t>(len));
    const int8_t e = quantize_kv_row(row.data(), len, codes.data());
    ASSERT_EQ(e, ref.exponent) << "trial " << trial;
    ASSERT_EQ(codes, ref.codes) << "trial " << trial;
    std::vector<float> back(static_cast<size_t>(len));
    widen_e4m3(codes.data(), len, kv_row_scale(e), back.data());
    ASSERT_EQ(back, ref.values) << "trial " << trial;
  }
}

TEST(Fp8KvRow, EveryCodeReadsBackAsItsValue) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7F) == 0x7F) continue;  // NaN: never written
    const uint8_t c = static_cast<uint8_t>(code);
    for (int e : {-126, -7, 0, 5, 126}) {
      float v = 0;
      widen_e4m3(&c, 1, kv_row_scale(static_cast<int8_t>(e)), &v);
      EXPECT_EQ(v, static_cast<float>(std::ldexp(e4m3_reference_value(code), e))) << "code " << code << " e " << e;
    }
  }
}

// Every kernel table's widen_e4m3 (F16C, AVX-512, NEON, portable) gives the reference values,
// for every code, at lengths that leave every tail size, for scales across the range.
TEST(Fp8KvRow, EveryKernelTableWidensLikeTheReference) {
  Random rng(test_seed());
  for (const cpu::Kernels* k : cpu::supported_kernels())
    for (int trial = 0; trial < 200; ++trial) {
      const int64_t n = trial < 2 ? 254 : rng.integer(1, 70);
      std::vector<uint8_t> codes(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        int code = trial < 2 ? static_cast<int>(i) + (i >= 0x7F ? 1 : 0) : static_cast<int>(rng.integer(0, 255));
        if ((code & 0x7F) == 0x7F) code ^= 1;  // NaN codes are never written
        codes[static_cast<size_t>(i)] = static_cast<uint8_t>(code);
      }
      const int e = static_cast<int>(rng.integer(kKvExponentMin, kKvExponentMax));
      std::vector<float> out(static_cast<size_t>(n) + 1, -7.0f);
      k->widen_e4m3(codes.data(), n, kv_row_scale(static_cast<int8_t>(e)), out.data());
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(out[i], static_cast<float>(std::ldexp(e4m3_reference_value(codes[i]), e)))
            << k->name << " code " << int(codes[i]) << " e " << e << " n " << n;
      ASSERT_EQ(out[n], -7.0f) << k->name << ": wrote past n = " << n;
    }
}

TEST(Fp8KvRow, NonFiniteRowsReadBackAsNan) {
  for (float bad : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(), std::nanf("")}) {
    const std::vector<float> row = {1.0f, bad, -2.0f};
    std::vector<uint8_t> codes(3, 0xAA);
    const int8_t e = quantize_kv_row(row.data(), 3, codes.data());
    EXPECT_EQ(e, kKvPoisonedRow);
    std::vector<float> back(3);
    widen_e4m3(codes.data(), 3, kv_row_scale(e), back.data());
    for (float v : back) EXPECT_TRUE(std::isnan(v));
  }
}

}  // namespace
}  // namespace moxin::cpu_test
