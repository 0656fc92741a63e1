// Rotary embedding frequencies as transformers computes them in f32: inv_freq(i) = 1 / theta^(2i / D)
// for pair i of a D-wide head, the power rounded correctly to f32 (through f64), so that the CPU
// and CUDA backends agree on every frequency: one ulp off would move the angle at position 32k by
// ~2e-3 rad.
#pragma once

#include <cmath>
#include <cstdint>

namespace moxin {

inline float rope_inv_freq(float theta, int64_t i, int64_t head_dim) {
  const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
  return 1.0f / static_cast<float>(std::pow(static_cast<double>(theta), static_cast<double>(exponent)));
}

}  // namespace moxin
