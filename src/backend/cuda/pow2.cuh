// Powers of two built from their bits: exact, no exp2f, a constant once the exponent is.
#pragma once

#include <cstdint>

namespace moxin::cuda {

// 2^e for -126 <= e <= 127.
__device__ __forceinline__ float pow2(int e) { return __uint_as_float(static_cast<uint32_t>(127 + e) << 23); }

}  // namespace moxin::cuda
