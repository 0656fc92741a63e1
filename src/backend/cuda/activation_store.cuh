// Writing the output of an op that feeds a linear (kernels.hpp's Activations): f32, or bf16
// rounded to nearest even (as activations_to_bf16 rounds) where the linear multiplies bf16
// activations; and reading an input of either kind. Kernels are templated on the element type;
// launchers pick the instance here.
#pragma once

#include <cuda_bf16.h>

#include "backend/cuda/kernels.hpp"

namespace moxin::cuda {

__device__ __forceinline__ void store_activation(float* y, int64_t i, float v) { y[i] = v; }
__device__ __forceinline__ void store_activation(__nv_bfloat16* y, int64_t i, float v) {
  y[i] = __float2bfloat16_rn(v);
}

// An input element of either kind, as f32 (bf16 widens exactly).
__device__ __forceinline__ float load_activation(const float* x, int64_t i) { return x[i]; }
__device__ __forceinline__ float load_activation(const __nv_bfloat16* x, int64_t i) {
  return __bfloat162float(x[i]);
}

// launch(p) with the set pointer of y: float* or __nv_bfloat16*.
template <class Launch>
void with_activations(Activations y, Launch&& launch) {
  if (y.bf16 != nullptr)
    launch(reinterpret_cast<__nv_bfloat16*>(y.bf16));
  else
    launch(y.f32);
}

}  // namespace moxin::cuda
