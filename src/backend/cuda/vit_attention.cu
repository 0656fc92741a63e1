// Bidirectional multi-head attention of the ViT encoders: for each image b and head h, the
// T tokens' queries attend to all T keys. Grid: (query tiles, heads, images); each block
// streams the image's K/V of its head through shared memory, either in f32 on the CUDA cores
// (attention_tile.cuh) or rounded to bf16 for the tensor cores (attention_mma.cuh).
#include "backend/cuda/attention_mma.cuh"
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

template <int KD>
__global__ void __launch_bounds__(kMmaThreads)
    vit_attention_mma_kernel(const float* __restrict__ qkv, int tokens, int heads, int head_dim,
                             float scale, float* __restrict__ y) {
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  MmaAttention<KD> att(reinterpret_cast<__nv_bfloat16*>(smem_bytes));
  constexpr int kPadded = 16 * KD;
  const int image = blockIdx.z;
  const int head = blockIdx.y;
  const int q0 = blockIdx.x * kMmaRows;
  const int width = heads * head_dim;
  const float* base = qkv + static_cast<size_t>(image) * tokens * 3 * width + head * head_dim;

  for (int e = threadIdx.x; e < kMmaRows * kPadded; e += kMmaThreads) {
    const int row = e / kPadded;
    const int d = e % kPadded;
    const int t = q0 + row;
    const float value = (t < tokens && d < head_dim) ? base[static_cast<size_t>(t) * 3 * width + d] : 0.0f;
    att.q[row * att.stride + d] = __float2bfloat16_rn(value);
  }
  __syncthreads();
  att.load_q();
  const int all_keys[2] = {tokens, tokens};
  for (int key0 = 0; key0 < tokens; key0 += kMmaRows) {
    const int n = min(kMmaRows, tokens - key0);
    __syncthreads();  // the previous tile is consumed
    for (int e = threadIdx.x; e < kMmaRows * kPadded; e += kMmaThreads) {
      const int row = e / kPadded;
      const int d = e % kPadded;
      float kv = 0.0f, vv = 0.0f;
      if (row < n && d < head_dim) {
        const float* src = base + static_cast<size_t>(key0 + row) * 3 * width + d;
        kv = src[width];
        vv = src[2 * width];
      }
      att.k[row * att.stride + d] = __float2bfloat16_rn(kv);
      att.v[row * att.stride + d] = __float2bfloat16_rn(vv);
    }
    __syncthreads();
    att.consume(key0, n, scale, all_keys);
  }
  float* out = y + static_cast<size_t>(image) * tokens * width + head * head_dim;
  att.finish(head_dim, [&](int row, int d, float value) {
    if (q0 + row < tokens) out[static_cast<size_t>(q0 + row) * width + d] = value;
  });
}

}  // namespace

void vit_attention(const float* qkv, int batch, int tokens, int heads, int head_dim, bool tensor_cores,
                   float* y, cudaStream_t stream) {
  if (batch == 0 || tokens == 0 || heads == 0) return;
  const float scale = 1.0f / sqrtf(static_cast<float>(head_dim));
  if (tensor_cores) {
    const dim3 grid((tokens + kMmaRows - 1) / kMmaRows, heads, batch);
    dispatch_mma_head_dim(head_dim, [&]<int KD>() {
      vit_attention_mma_kernel<KD><<<grid, kMmaThreads, mma_smem_bytes(head_dim), stream>>>(
          qkv, tokens, heads, head_dim, scale, y);
      MOXIN_CUDA_CHECK_LAUNCH("vit_attention_mma_kernel");
    });
    return;
  }
  const dim3 grid((tokens + kQueryTile - 1) / kQueryTile, heads, batch);
  const size_t smem = tile_smem_bytes(head_dim);
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
  for_all_mma_head_dims([&]<int KD>() {
    MOXIN_CUDA_CHECK(allow_mma_smem<KD>(vit_attention_mma_kernel<KD>));
  });
}

}  // namespace moxin::cuda
