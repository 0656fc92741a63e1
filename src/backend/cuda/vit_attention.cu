// Bidirectional multi-head attention of the ViT encoders: for each image b and head h, the
// T tokens' queries attend to all T keys. Grid: (query tiles, heads, images); each block
// streams the image's K/V of its head through shared memory, either in f32 on the CUDA cores
// (attention_tile.cuh) or rounded to bf16 for the tensor cores (attention_mma.cuh; all keys
// staged at once where they fit).
#include "backend/cuda/activation_store.cuh"
#include "backend/cuda/attention_mma.cuh"
#include "backend/cuda/attention_tile.cuh"
#include "backend/cuda/head_dim_dispatch.cuh"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"

namespace moxin::cuda {
namespace {

template <int DJ, class Out>
__global__ void __launch_bounds__(kTileThreads)
    vit_attention_kernel(const float* __restrict__ qkv, int tokens, int heads, int head_dim,
                         float scale, Out* __restrict__ y) {
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
  Out* out = y + static_cast<size_t>(image) * tokens * width + head * head_dim;
  tile.finish([&](int row, int d, float value) {
    if (q0 + row < tokens) store_activation(out, static_cast<int64_t>(q0 + row) * width + d, value);
  });
}

// 3 warps (48 query rows) per block: a 256- or 261-token image gives 6 x 16 heads = 96 blocks,
// one wave on the H200 even at one block per SM.
constexpr int kVitWarps = 3;
constexpr int kVitThreads = 32 * kVitWarps;
constexpr int kVitQueries = 16 * kVitWarps;
// Shared memory a block may take for its keys: all of an image's K and V (one load round trip,
// one barrier) where they fit, 64-key tiles through one stage otherwise.
constexpr size_t kVitStagedBytes = 200u << 10;

// Key tiles of `tokens` keys, and the K/V stages a block stages at once: all of them when they
// fit in kVitStagedBytes, else one.
__host__ __device__ inline int vit_key_tiles(int tokens) { return (tokens + kMmaRows - 1) / kMmaRows; }
inline int vit_kv_stages(int tokens, int head_dim) {
  const int tiles = vit_key_tiles(tokens);
  return mma_smem_bytes(head_dim, kVitWarps, tiles) <= kVitStagedBytes ? tiles : 1;
}
template <int KD>
constexpr int vit_max_kv_stages() {
  return static_cast<int>((kVitStagedBytes / (size_t(16 * KD + 8) * 2) - 16 * kVitWarps) /
                          (2 * kMmaRows));
}

// rows x padded dims of one head's Q, K or V (columns `column` .. + head_dim of rows
// row0 .. of a [tokens, 3 * width] matrix) as bf16 into shared memory; zeros past the last
// row or dim. `vec4`: head_dim % 4 == 0 and 16-byte aligned rows (float4 loads). Each thread
// issues kBatch loads before converting and storing any, so that a block's staging costs a few
// memory round trips rather than one per element it copies.
template <int kPadded>
__device__ void stage_rows_bf16(const float* base, int row_stride, int first_row, int rows,
                                int valid_rows, int head_dim, bool vec4, __nv_bfloat16* dst,
                                int dst_stride) {
  constexpr int kBatch = 8;
  if (vec4) {
    constexpr int kQuads = kPadded / 4;
    for (int e0 = threadIdx.x; e0 < rows * kQuads; e0 += kVitThreads * kBatch) {
      float4 v[kBatch];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int e = e0 + i * kVitThreads;
        const int r = e / kQuads;
        const int d = (e % kQuads) * 4;
        v[i] = (e < rows * kQuads && r < valid_rows && d < head_dim)
                   ? __ldg(reinterpret_cast<const float4*>(
                         base + static_cast<size_t>(first_row + r) * row_stride + d))
                   : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int e = e0 + i * kVitThreads;
        if (e < rows * kQuads)
          *reinterpret_cast<uint2*>(dst + (e / kQuads) * dst_stride + (e % kQuads) * 4) =
              make_uint2(pack_bf16(v[i].x, v[i].y), pack_bf16(v[i].z, v[i].w));
      }
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

// The same from a bf16 qkv (written by the projection, rounded as the f32 path rounds): the bits
// are copied. `vec` (head_dim % 8 == 0, 16-byte aligned rows): 16-byte cp.async pieces, all of a
// thread's in flight at once (zero-filled past the last row and in the padding), completed by
// wait_staged; otherwise element by element.
template <int kPadded>
__device__ void stage_rows_bf16(const __nv_bfloat16* base, int row_stride, int first_row, int rows,
                                int valid_rows, int head_dim, bool vec, __nv_bfloat16* dst,
                                int dst_stride) {
  if (vec) {
    constexpr int kPieces = kPadded / 8;
    for (int e = threadIdx.x; e < rows * kPieces; e += kVitThreads) {
      const int r = e / kPieces;
      const int d = (e % kPieces) * 8;
      const bool valid = r < valid_rows && d < head_dim;
      copy16_or_zero(dst + r * dst_stride + d,
                     valid ? base + static_cast<size_t>(first_row + r) * row_stride + d : base, valid);
    }
    return;
  }
  for (int e = threadIdx.x; e < rows * kPadded; e += kVitThreads) {
    const int r = e / kPadded;
    const int d = e % kPadded;
    dst[r * dst_stride + d] = (r < valid_rows && d < head_dim)
                                  ? base[static_cast<size_t>(first_row + r) * row_stride + d]
                                  : __float2bfloat16_rn(0.0f);
  }
}

// kv_stages: key tiles staged at once (all of them, or 1). y: f32, or bf16 where the projection
// after takes bf16 (rounded here rather than by a conversion kernel: the same bits).
// qkv: f32 (rounded while staged) or bf16 (copied); vec: the vector staging applies (see the
// stage_rows_bf16 for each).
template <int KD, class In, class Out>
__global__ void __launch_bounds__(kVitThreads)
    vit_attention_mma_kernel(const In* __restrict__ qkv, int tokens, int heads, int head_dim,
                             float scale, bool vec, int kv_stages, Out* __restrict__ y) {
  wait_for_prior_kernels();
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  MmaAttention<KD, kVitWarps> att(reinterpret_cast<__nv_bfloat16*>(smem_bytes));
  constexpr int kPadded = 16 * KD;
  const int image = blockIdx.z;
  const int head = blockIdx.y;
  const int q0 = blockIdx.x * kVitQueries;
  const int width = heads * head_dim;
  const int row_stride = 3 * width;
  const In* base = qkv + static_cast<size_t>(image) * tokens * row_stride + head * head_dim;
  auto stage_keys = [&](int tile) {
    const int key0 = tile * kMmaRows;
    att.use_stage(kv_stages == 1 ? 0 : tile);
    stage_rows_bf16<kPadded>(base + width, row_stride, key0, kMmaRows, tokens - key0, head_dim,
                             vec, att.k, att.stride);
    stage_rows_bf16<kPadded>(base + 2 * width, row_stride, key0, kMmaRows, tokens - key0,
                             head_dim, vec, att.v, att.stride);
  };
  // This thread's asynchronous copies (bf16 qkv) have landed; the barrier after makes everyone's visible.
  auto staged = [] {
    copies_issued();
    wait_staged<0>();
  };

  stage_rows_bf16<kPadded>(base, row_stride, q0, kVitQueries, tokens - q0, head_dim, vec, att.q,
                           att.stride);
  const int tiles = vit_key_tiles(tokens);
  if (kv_stages > 1)
    for (int tile = 0; tile < tiles; ++tile) stage_keys(tile);
  staged();
  __syncthreads();
  att.load_q();
  const int all_keys[2] = {tokens, tokens};
  for (int tile = 0; tile < tiles; ++tile) {
    if (kv_stages == 1) {
      __syncthreads();  // the previous tile is consumed
      stage_keys(tile);
      staged();
      __syncthreads();
    }
    att.use_stage(kv_stages == 1 ? 0 : tile);
    const int n = min(kMmaRows, tokens - tile * kMmaRows);
    if (n == kMmaRows)
      att.template consume<false>(tile * kMmaRows, n, scale * kLog2e, all_keys);
    else
      att.consume(tile * kMmaRows, n, scale * kLog2e, all_keys);
  }
  Out* out = y + static_cast<size_t>(image) * tokens * width + head * head_dim;
  att.finish(head_dim, [&](int row, int d, float value) {
    if (q0 + row < tokens) store_activation(out, static_cast<int64_t>(q0 + row) * width + d, value);
  });
}

}  // namespace

void vit_attention(const float* qkv_f32, const bf16_bits* qkv_bf16, int batch, int tokens, int heads, int head_dim,
                   bool tensor_cores, Activations y, cudaStream_t stream) {
  if (batch == 0 || tokens == 0 || heads == 0) return;
  const float scale = 1.0f / sqrtf(static_cast<float>(head_dim));
  with_activations(y, [&]<class Out>(Out* out) {
    if (tensor_cores) {
      const dim3 grid((tokens + kVitQueries - 1) / kVitQueries, heads, batch);
      const int kv_stages = vit_kv_stages(tokens, head_dim);
      const auto launch = [&]<class In>(const In* qkv, int piece) {
        // Vector staging: whole pieces per head row, every row and head start 16-byte aligned
        // (the row stride is 3 heads x head_dim elements).
        const bool vec = head_dim % piece == 0 && reinterpret_cast<uintptr_t>(qkv) % 16 == 0;
        dispatch_head_dim_chunks(head_dim, [&]<int KD>() {
          launch_kernel("vit_attention_mma_kernel", vit_attention_mma_kernel<KD, In, Out>, grid, kVitThreads,
                        mma_smem_bytes(head_dim, kVitWarps, kv_stages), stream, qkv, tokens, heads, head_dim, scale,
                        vec, kv_stages, out);
        });
      };
      if (qkv_bf16 != nullptr)
        launch(reinterpret_cast<const __nv_bfloat16*>(qkv_bf16), 8);
      else
        launch(qkv_f32, 4);
      return;
    }
    MOXIN_CHECK(qkv_f32 != nullptr, "[cuda] vit_attention: the f32 (CUDA-core) path takes an f32 qkv");
    const dim3 grid((tokens + kQueryTile - 1) / kQueryTile, heads, batch);
    const size_t smem = tile_smem_bytes(head_dim);
    dispatch_head_dim_chunks(head_dim, [&]<int DJ>() {
      launch_kernel("vit_attention_kernel", vit_attention_kernel<DJ, Out>, grid, kTileThreads, smem, stream, qkv_f32,
                    tokens, heads, head_dim, scale, out);
    });
  });
}

void configure_vit_attention() {
  const auto allow = [&]<class Out>() {
    for_all_head_dim_chunks(
        [&]<int DJ>() { MOXIN_CUDA_CHECK(allow_tile_smem<DJ>(vit_attention_kernel<DJ, Out>)); });
    for_all_head_dim_chunks([&]<int KD>() {
      for_all_activation_types([&]<class In>() {
        MOXIN_CUDA_CHECK(
            (allow_mma_smem<KD, kVitWarps, vit_max_kv_stages<KD>()>(vit_attention_mma_kernel<KD, In, Out>)));
      });
    });
  };
  for_all_activation_types(allow);
}

}  // namespace moxin::cuda
