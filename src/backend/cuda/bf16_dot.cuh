// bf16 pairs as f32 (the decode GEMV, gemv.cu, and the split-K attention's bf16 cache reads) and
// the GEMV's 8-weight dot step.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moxin::cuda {

__device__ __forceinline__ float bf16_low(uint32_t pair) { return __uint_as_float(pair << 16); }
__device__ __forceinline__ float bf16_high(uint32_t pair) { return __uint_as_float(pair & 0xffff0000u); }

// acc + dot(8 bf16 weights, 8 f32 activations a|b), one fma after the other.
__device__ __forceinline__ float dot8(uint4 w, float4 a, float4 b, float acc) {
  acc = fmaf(bf16_low(w.x), a.x, acc);
  acc = fmaf(bf16_high(w.x), a.y, acc);
  acc = fmaf(bf16_low(w.y), a.z, acc);
  acc = fmaf(bf16_high(w.y), a.w, acc);
  acc = fmaf(bf16_low(w.z), b.x, acc);
  acc = fmaf(bf16_high(w.z), b.y, acc);
  acc = fmaf(bf16_low(w.w), b.z, acc);
  acc = fmaf(bf16_high(w.w), b.w, acc);
  return acc;
}

}  // namespace moxin::cuda
