// Bidirectional multi-head attention of the ViT encoders: for each image b and head h, the
// T tokens' queries attend to all T keys. Grid: (query tiles, heads, images); each block
// streams the image's K/V of its head through shared memory in f32 (attention_tile.cuh).
#include "backend/cuda/attention_tile.cuh"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/kernels.hpp"

namespace moxin::cuda {
namespace {

template <int DJ>
__global__ void __launch_bounds__(kTileThreads)
    vit_attention_kernel(const float* __restrict__ qkv, int tokens, int heads, int head_dim,
                         float scale, float* __restrict__ y) {
  extern __shared__ float smem[];
  AttentionTile<DJ> tile(smem, head_dim);
  const int image = blockIdx.z;
  const int head = blockIdx.y;
  const int q0 = blockIdx.x * kQueryTile;
  const int width = heads * head_dim;
  const float* base = qkv + static_cast<size_t>(image) * tokens * 3 * width;

  for (int e = threadIdx.x; e < kQueryTile * head_dim; e += kTileThreads) {
    const int row = e / head_dim;
    const int d = e % head_dim;
    const int t = q0 + row;
    tile.q[row * tile.dp + d] =
        t < tokens ? base[static_cast<size_t>(t) * 3 * width + head * head_dim + d] : 0.0f;
  }
  for (int key0 = 0; key0 < tokens; key0 += kKeyTile) {
    const int n = min(kKeyTile, tokens - key0);
    __syncthreads();  // the previous tile is consumed
    for (int e = threadIdx.x; e < n * head_dim; e += kTileThreads) {
      const int row = e / head_dim;
      const int d = e % head_dim;
      const float* src = base + static_cast<size_t>(key0 + row) * 3 * width + head * head_dim + d;
      tile.k[row * tile.dp + d] = src[width];
      tile.v[row * tile.dp + d] = src[2 * width];
    }
    __syncthreads();
    tile.consume(key0, n, scale, [](int, int) { return true; });
  }
  float* out = y + static_cast<size_t>(image) * tokens * width + head * head_dim;
  tile.finish([&](int row, int d, float value) {
    if (q0 + row < tokens) out[static_cast<size_t>(q0 + row) * width + d] = value;
  });
}

}  // namespace

void vit_attention(const float* qkv, int batch, int tokens, int heads, int head_dim, float* y,
                   cudaStream_t stream) {
  if (batch == 0 || tokens == 0 || heads == 0) return;
  const dim3 grid((tokens + kQueryTile - 1) / kQueryTile, heads, batch);
  const size_t smem = tile_smem_bytes(head_dim);
  const float scale = 1.0f / sqrtf(static_cast<float>(head_dim));
  dispatch_dims_per_thread(head_dim, [&]<int DJ>() {
    vit_attention_kernel<DJ><<<grid, kTileThreads, smem, stream>>>(qkv, tokens, heads, head_dim,
                                                                    scale, y);
    MOXIN_CUDA_CHECK_LAUNCH("vit_attention_kernel");
  });
}

void configure_vit_attention() {
  for_all_dims_per_thread([&]<int DJ>() {
    MOXIN_CUDA_CHECK(allow_tile_smem<DJ>(vit_attention_kernel<DJ>));
  });
}

}  // namespace moxin::cuda
