// silu(gate) * up as every CUDA kernel computes it (the swiglu op and the gated GEMV's epilogue),
// so that a fused op gives the same bits as the unfused ones: accurate expf, a division, then the
// product, in that order.
#pragma once

namespace moxin::cuda {

__device__ __forceinline__ float silu_times(float gate, float up) { return gate / (1.0f + expf(-gate)) * up; }

}  // namespace moxin::cuda
