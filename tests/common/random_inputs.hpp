// Random test inputs from a seeded generator (the seed is printed by the test that draws it).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace moxin::test_common {

class Random {
 public:
  explicit Random(uint32_t seed) : rng_(seed) {}
  std::vector<float> uniform(size_t n, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng_);
    return v;
  }
  int64_t integer(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng_); }
  std::mt19937& engine() { return rng_; }

 private:
  std::mt19937 rng_;
};

}  // namespace moxin::test_common
