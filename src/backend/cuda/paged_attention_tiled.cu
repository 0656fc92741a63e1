// Prefill attention over the paged cache: grid (tiles of 32 consecutive tokens, query heads).
// A block streams K/V tiles of 64 positions of its tokens' sequence through shared memory
// (attention_tile.cuh) with the causal mask key <= pos. Tokens of several sequences may share
// a tile: the block then makes one pass per distinct sequence, each token seeing only keys of
// its own sequence, so any AttentionBatch is right and a prefill chunk is fast.
#include <climits>

#include "backend/cuda/attention_tile.cuh"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/kernels.hpp"

namespace moxin::cuda {
namespace {

template <int DJ>
__global__ void __launch_bounds__(kTileThreads)
    paged_tiled_kernel(const float* __restrict__ q, PagedLayer cache, TokenIndex index,
                       int q_heads, float scale, float* __restrict__ y) {
  extern __shared__ float smem[];
  __shared__ int tok_seq[kQueryTile];
  __shared__ int tok_pos[kQueryTile];
  __shared__ int pass_seq;
  __shared__ int pass_last;
  AttentionTile<DJ> tile(smem, cache.head_dim);
  const int head_dim = cache.head_dim;
  const int t0 = blockIdx.x * kQueryTile;
  const int head = blockIdx.y;
  const int kv_head = head / (q_heads / cache.kv_heads);
  const int capacity = index.max_blocks * cache.block_size;

  if (threadIdx.x < kQueryTile) {
    const int t = t0 + threadIdx.x;
    int seq = -1, pos = -1;
    if (t < index.tokens) {
      const int s = index.token_seq[t];
      const int p = index.token_pos[t];
      if (s >= 0 && s < index.num_seqs && p >= 0 && p < capacity) {
        seq = s;
        pos = p;
      }
    }
    tok_seq[threadIdx.x] = seq;
    tok_pos[threadIdx.x] = pos;
  }
  for (int e = threadIdx.x; e < kQueryTile * head_dim; e += kTileThreads) {
    const int row = e / head_dim;
    const int d = e % head_dim;
    const int t = t0 + row;
    tile.q[row * tile.dp + d] =
        t < index.tokens ? q[(static_cast<size_t>(t) * q_heads + head) * head_dim + d] : 0.0f;
  }

  const size_t row_stride = static_cast<size_t>(cache.kv_heads) * head_dim;
  int prev_seq = -1;
  while (true) {
    __syncthreads();
    if (threadIdx.x < 32) {  // next sequence id above prev_seq, and its last position here
      const int s = tok_seq[threadIdx.x];
      int next = s > prev_seq ? s : INT_MAX;
      for (int o = 16; o > 0; o /= 2) next = min(next, __shfl_xor_sync(0xffffffffu, next, o));
      int last = s == next ? tok_pos[threadIdx.x] : -1;
      for (int o = 16; o > 0; o /= 2) last = max(last, __shfl_xor_sync(0xffffffffu, last, o));
      if (threadIdx.x == 0) {
        pass_seq = next;
        pass_last = last;
      }
    }
    __syncthreads();
    const int seq = pass_seq;
    const int last = pass_last;
    if (seq == INT_MAX) break;
    const int32_t* table = index.block_tables + static_cast<size_t>(seq) * index.max_blocks;
    for (int key0 = 0; key0 <= last; key0 += kKeyTile) {
      const int n = min(kKeyTile, last + 1 - key0);
      __syncthreads();  // the previous tile is consumed
      for (int e = threadIdx.x; e < n * head_dim; e += kTileThreads) {
        const int row = e / head_dim;
        const int d = e % head_dim;
        const int key = key0 + row;
        const int block = table[key / cache.block_size];
        float kv = 0.0f, vv = 0.0f;
        if (block >= 0 && block < cache.num_blocks) {
          const size_t src = (static_cast<size_t>(block) * cache.block_size + key % cache.block_size) * row_stride +
                             static_cast<size_t>(kv_head) * head_dim + d;
          kv = __uint_as_float(static_cast<uint32_t>(cache.k[src]) << 16);
          vv = __uint_as_float(static_cast<uint32_t>(cache.v[src]) << 16);
        }
        tile.k[row * tile.dp + d] = kv;
        tile.v[row * tile.dp + d] = vv;
      }
      __syncthreads();
      tile.consume(key0, n, scale, [&](int row, int key) {
        return tok_seq[row] == seq && key <= tok_pos[row];
      });
    }
    prev_seq = seq;
  }
  tile.finish([&](int row, int d, float value) {
    const int t = t0 + row;
    if (t < index.tokens) y[(static_cast<size_t>(t) * q_heads + head) * head_dim + d] = value;
  });
}

}  // namespace

void paged_attention_tiled(const float* q, const PagedLayer& cache, const TokenIndex& index,
                           int q_heads, float* y, cudaStream_t stream) {
  if (index.tokens == 0) return;
  const dim3 grid((index.tokens + kQueryTile - 1) / kQueryTile, q_heads);
  const size_t smem = tile_smem_bytes(cache.head_dim);
  const float scale = 1.0f / sqrtf(static_cast<float>(cache.head_dim));
  dispatch_dims_per_thread(cache.head_dim, [&]<int DJ>() {
    paged_tiled_kernel<DJ><<<grid, kTileThreads, smem, stream>>>(q, cache, index, q_heads, scale, y);
    MOXIN_CUDA_CHECK_LAUNCH("paged_tiled_kernel");
  });
}

void configure_paged_attention() {
  for_all_dims_per_thread([&]<int DJ>() {
    MOXIN_CUDA_CHECK(allow_tile_smem<DJ>(paged_tiled_kernel<DJ>));
  });
}

}  // namespace moxin::cuda
