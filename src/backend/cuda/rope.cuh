// The rotary embedding's arithmetic, shared by the kernels that rotate (rope_kv.cu, and the
// decode attention that fuses the rotation in, paged_attention_mma.cu) so that both give the
// same bits.
#pragma once

#include <cuda_runtime.h>

namespace moxin::cuda {

// A pair's cosine and sine at `pos` the way transformers computes them in f32: angle = f32(pos) *
// inv_freq, then accurate sine and cosine (full range reduction: angles reach 32k radians).
__device__ __forceinline__ void rope_cos_sin(int pos, float inv_freq, float& c, float& s) {
  sincosf(static_cast<float>(pos) * inv_freq, &s, &c);
}

// Rotate-half on one pair: (x1 c - x2 s, x2 c + x1 s), every product and sum rounded on its own
// as transformers' (x * cos) + (rotate_half(x) * sin) does (no contraction into FMAs).
__device__ __forceinline__ void rotate_pair(float x1, float x2, float c, float s, float& out1, float& out2) {
  out1 = __fadd_rn(__fmul_rn(x1, c), -__fmul_rn(x2, s));
  out2 = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
}

}  // namespace moxin::cuda
