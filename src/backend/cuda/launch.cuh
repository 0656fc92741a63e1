// Grid sizing shared by the element-wise kernels.
#pragma once

#include <algorithm>
#include <cstdint>

namespace moxin::cuda {

constexpr int kElementwiseThreads = 256;

// Enough blocks to fill the GPU for a grid-stride loop over `count` items, never zero.
inline unsigned elementwise_blocks(int64_t count) {
  const int64_t wanted = (count + kElementwiseThreads - 1) / kElementwiseThreads;
  return static_cast<unsigned>(std::clamp<int64_t>(wanted, 1, 4096));
}

}  // namespace moxin::cuda
