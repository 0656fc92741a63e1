// The ViT's LayerScale residual update as every CUDA kernel rounds it (add_scaled, and the fused
// add + LayerNorm): x + scale * y in one fma, so the fused op gives the bits of the separate ones.
#pragma once

namespace moxin::cuda {

__device__ __forceinline__ float residual_scaled(float x, float scale, float y) { return fmaf(scale, y, x); }

}  // namespace moxin::cuda
