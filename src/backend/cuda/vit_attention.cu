// Bidirectional multi-head attention of the ViT encoders: for each image b and head h, the
// T tokens' queries attend to all T keys. Grid: (query tiles, heads, images); each block
// streams the image's K/V of its head through shared memory, either in f32 on the CUDA cores
// (attention_tile.cuh) or rounded to bf16 for the tensor cores (attention_mma.cuh).
#include "backend/cuda/attention_mma.cuh"
#include "backend/cuda/attention_tile.cuh"
#include "backend/cuda/head_dim_dispatch.cuh"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"

namespace moxin::cuda {
namespace {

template <int DJ>
__global__ void __launch_bounds__(kTileThreads)
    vit_attention_kernel(const float* __restrict__ qkv, int tokens, int heads, int head_dim,
                         float scale, float* __restrict__ y) {
  wait_for_prior_kernels();
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

// 2 warps (32 query rows) per block: a 261-token image gives 9 x 16 heads = 144 blocks.
constexpr int kVitWarps = 2;
constexpr int kVitThreads = 32 * kVitWarps;
constexpr int kVitQueries = 16 * kVitWarps;

// rows x padded dims of one head's Q, K or V (columns `column` .. + head_dim of rows
// row0 .. of a [tokens, 3 * width] matrix) as bf16 into shared memory; zeros past the last
// row or dim. `vec4`: head_dim % 4 == 0 and 16-byte aligned rows (float4 loads).
template <int kPadded>
__device__ void stage_rows_bf16(const float* base, int row_stride, int first_row, int rows,
                                int valid_rows, int head_dim, bool vec4, __nv_bfloat16* dst,
                                int dst_stride) {
  if (vec4) {
    constexpr int kQuads = kPadded / 4;
    for (int e = threadIdx.x; e < rows * kQuads; e += kVitThreads) {
      const int r = e / kQuads;
      const int d = (e % kQuads) * 4;
      float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (r < valid_rows && d < head_dim)
        v = __ldg(reinterpret_cast<const float4*>(
            base + static_cast<size_t>(first_row + r) * row_stride + d));
      const uint2 packed = make_uint2(pack_bf16(v.x, v.y), pack_bf16(v.z, v.w));
      *reinterpret_cast<uint2*>(dst + r * dst_stride + d) = packed;
    }
    return;
  }
  for (int e = threadIdx.x; e < rows * kPadded; e += kVitThreads) {
    const int r = e / kPadded;
    const int d = e % kPadded;
    const float v = (r < valid_rows && d < head_dim)
                        ? base[static_cast<size_t>(first_row + r) * row_stride + d]
                        : 0.0f;
    dst[r * dst_stride + d] = __float2bfloat16_rn(v);
  }
}

template <int KD>
__global__ void __launch_bounds__(kVitThreads)
    vit_attention_mma_kernel(const float* __restrict__ qkv, int tokens, int heads, int head_dim,
                             float scale, bool vec4, float* __restrict__ y) {
  wait_for_prior_kernels();
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  MmaAttention<KD, kVitWarps> att(reinterpret_cast<__nv_bfloat16*>(smem_bytes));
  constexpr int kPadded = 16 * KD;
  const int image = blockIdx.z;
  const int head = blockIdx.y;
  const int q0 = blockIdx.x * kVitQueries;
  const int width = heads * head_dim;
  const int row_stride = 3 * width;
  const float* base = qkv + static_cast<size_t>(image) * tokens * row_stride + head * head_dim;

  stage_rows_bf16<kPadded>(base, row_stride, q0, kVitQueries, tokens - q0, head_dim, vec4, att.q,
                           att.stride);
  __syncthreads();
  att.load_q();
  const int all_keys[2] = {tokens, tokens};
  for (int key0 = 0; key0 < tokens; key0 += kMmaRows) {
    const int n = min(kMmaRows, tokens - key0);
    __syncthreads();  // the previous tile is consumed
    stage_rows_bf16<kPadded>(base + width, row_stride, key0, kMmaRows, n, head_dim, vec4, att.k,
                             att.stride);
    stage_rows_bf16<kPadded>(base + 2 * width, row_stride, key0, kMmaRows, n, head_dim, vec4, att.v,
                             att.stride);
    __syncthreads();
    att.consume(key0, n, scale, all_keys);
  }
  float* out = y + static_cast<size_t>(image) * tokens * width + head * head_dim;
  att.finish(head_dim, [&](int row, int d, float value) {
    if (q0 + row < tokens) out[static_cast<size_t>(q0 + row) * width + d] = value;
  });
}

}  // namespace

void vit_attention(const float* qkv, int batch, int tokens, int heads, int head_dim,
                   bool tensor_cores, float* y, cudaStream_t stream) {
  if (batch == 0 || tokens == 0 || heads == 0) return;
  const float scale = 1.0f / sqrtf(static_cast<float>(head_dim));
  if (tensor_cores) {
    const dim3 grid((tokens + kVitQueries - 1) / kVitQueries, heads, batch);
    const bool vec4 = head_dim % 4 == 0 && reinterpret_cast<uintptr_t>(qkv) % 16 == 0;
    dispatch_head_dim_chunks(head_dim, [&]<int KD>() {
      launch_kernel("vit_attention_mma_kernel", vit_attention_mma_kernel<KD>, grid, kVitThreads,
                    mma_smem_bytes(head_dim, kVitWarps), stream, qkv, tokens, heads, head_dim,
                    scale, vec4, y);
    });
    return;
  }
  const dim3 grid((tokens + kQueryTile - 1) / kQueryTile, heads, batch);
  const size_t smem = tile_smem_bytes(head_dim);
  dispatch_head_dim_chunks(head_dim, [&]<int DJ>() {
    launch_kernel("vit_attention_kernel", vit_attention_kernel<DJ>, grid, kTileThreads, smem,
                  stream, qkv, tokens, heads, head_dim, scale, y);
  });
}

void configure_vit_attention() {
  for_all_head_dim_chunks(
      [&]<int DJ>() { MOXIN_CUDA_CHECK(allow_tile_smem<DJ>(vit_attention_kernel<DJ>)); });
  for_all_head_dim_chunks([&]<int KD>() {
    MOXIN_CUDA_CHECK((allow_mma_smem<KD, kVitWarps>(vit_attention_mma_kernel<KD>)));
  });
}

}  // namespace moxin::cuda
