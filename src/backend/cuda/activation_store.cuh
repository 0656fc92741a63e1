// Writing the output of an op that feeds a linear (kernels.hpp's Activations): f32, or bf16
// rounded to nearest even (as activations_to_bf16 rounds) where the linear multiplies bf16
// activations. Kernels are templated on the element type; launchers pick the instance here.
#pragma once

#include <cuda_bf16.h>

#include "backend/cuda/kernels.hpp"

namespace moxin::cuda {

__device__ __forceinline__ void store_activation(float* y, int64_t i, float v) { y[i] = v; }
__device__ __forceinline__ void store_activation(__nv_bfloat16* y, int64_t i, float v) {
  y[i] = __float2bfloat16_rn(v);
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
