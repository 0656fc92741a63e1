// Writing the output of an op that feeds a linear (kernels.hpp's Activations): f32, or bf16
// rounded to nearest even (as activations_to_bf16 rounds) where the linear multiplies bf16
// activations; and reading an input of either kind. Kernels are templated on the element type;
// launchers pick the instance here.
#pragma once

#include <cuda_bf16.h>

#include "backend/cuda/kernels.hpp"
#include "core/check.hpp"

namespace moxin::cuda {

__device__ __forceinline__ void store_activation(float* y, int64_t i, float v) { y[i] = v; }
__device__ __forceinline__ void store_activation(__nv_bfloat16* y, int64_t i, float v) {
  y[i] = __float2bfloat16_rn(v);
}

// Eight consecutive outputs from y[i] on (i % 8 == 0, 16-byte aligned rows): two float4 stores,
// or one 16-byte store of eight bf16.
__device__ __forceinline__ void store_activations8(float* y, int64_t i, const float (&v)[8]) {
  reinterpret_cast<float4*>(y + i)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(y + i)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void store_activations8(__nv_bfloat16* y, int64_t i, const float (&v)[8]) {
  __nv_bfloat162 packed[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) packed[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
  *reinterpret_cast<uint4*>(y + i) = *reinterpret_cast<const uint4*>(packed);
}

// An input element of either kind, as f32 (bf16 widens exactly).
__device__ __forceinline__ float load_activation(const float* x, int64_t i) { return x[i]; }
__device__ __forceinline__ float load_activation(const __nv_bfloat16* x, int64_t i) {
  return __bfloat162float(x[i]);
}

// Four consecutive inputs as f32 (aligned: 16 bytes of f32, 8 of bf16).
__device__ __forceinline__ float4 load4_activations(const float* x, int c) {
  return *reinterpret_cast<const float4*>(x + c);
}
__device__ __forceinline__ float4 load4_activations(const __nv_bfloat16* x, int c) {
  const uint2 raw = *reinterpret_cast<const uint2*>(x + c);
  const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
  const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}

// f.template operator()<Out>() for each output element type a kernel is instantiated for (f32 and
// bf16): the one-time setup of every instance with_activations may launch.
template <class F>
void for_all_activation_types(F&& f) {
  f.template operator()<float>();
  f.template operator()<__nv_bfloat16>();
}

// launch(p) with the set pointer of y: float* or __nv_bfloat16*. E4M3 rows go only to the kernels
// with a block per row (e4m3_rows.cuh's with_row_activations); the ops refuse them for the rest.
template <class Launch>
void with_activations(Activations y, Launch&& launch) {
  MOXIN_CHECK(y.e4m3.codes == nullptr, "[cuda] this op cannot write per-token E4M3 activations");
  if (y.bf16 != nullptr)
    launch(reinterpret_cast<__nv_bfloat16*>(y.bf16));
  else
    launch(y.f32);
}

}  // namespace moxin::cuda
