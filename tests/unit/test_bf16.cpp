// bf16/f16 conversions against exactly representable values and IEEE rounding cases.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "core/bf16.hpp"

namespace moxin {
namespace {

TEST(Bf16, RoundTripsExactValues) {
  for (float f : {0.0f, 1.0f, -2.5f, 65280.0f, 1.0f / 1024.0f})
    EXPECT_EQ(bf16_to_f32(f32_to_bf16(f)), f);
}

TEST(Bf16, RoundsToNearestEven) {
  // 1 + 2^-8 lies exactly between two bf16 values (1 and 1 + 2^-7): ties go to even (1).
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
}

TEST(F16, MatchesHalfPrecisionGrid) {
  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<uint32_t> bits(0, 0xffff);
  for (int i = 0; i < 100000; ++i) {
    const auto h = static_cast<uint16_t>(bits(rng));
    const float f = f16_to_f32(h);
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_f16(f), h) << "half bits " << h;
  }
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // overflows to inf
}

}  // namespace
}  // namespace moxin
