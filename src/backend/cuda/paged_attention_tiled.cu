// Prefill attention over the paged cache: grid (tiles of consecutive tokens, query heads).
// A block streams K/V tiles of 64 positions of its tokens' sequence through shared memory with
// the causal mask key <= pos, either in f32 on the CUDA cores (32-token tiles,
// attention_tile.cuh) or on the tensor cores with Q and P rounded to bf16 (64-token tiles,
// attention_mma.cuh). Tokens of several sequences may share a tile: the block then makes one
// pass per distinct sequence, each token seeing only keys of its own sequence, so any
// AttentionBatch is right and a prefill chunk is fast.
#include <climits>

#include "backend/cuda/activation_store.cuh"
#include "backend/cuda/attention_mma.cuh"
#include "backend/cuda/attention_tile.cuh"
#include "backend/cuda/head_dim_dispatch.cuh"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/fp8_kv.cuh"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"

namespace moxin::cuda {
namespace {

// The next pass of a tile: the smallest sequence id above prev_seq among the tile's tokens and
// the last position of that sequence in the tile (INT_MAX: no pass left). Warp 0 only.
template <int kTokens>
__device__ void next_pass(const int* tok_seq, const int* tok_pos, int prev_seq, int* pass_seq,
                          int* pass_last) {
  int next = INT_MAX;
  for (int i = threadIdx.x; i < kTokens; i += 32)
    if (tok_seq[i] > prev_seq) next = min(next, tok_seq[i]);
  for (int o = 16; o > 0; o /= 2) next = min(next, __shfl_xor_sync(0xffffffffu, next, o));
  int last = -1;
  for (int i = threadIdx.x; i < kTokens; i += 32)
    if (tok_seq[i] == next) last = max(last, tok_pos[i]);
  for (int o = 16; o > 0; o /= 2) last = max(last, __shfl_xor_sync(0xffffffffu, last, o));
  if (threadIdx.x == 0) {
    *pass_seq = next;
    *pass_last = last;
  }
}

template <int DJ, class Out>
__global__ void __launch_bounds__(kTileThreads)
    paged_tiled_kernel(const float* __restrict__ q, PagedLayer cache, TokenIndex index, int q_heads,
                       float scale, Out* __restrict__ y) {
  wait_for_prior_kernels();
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
    if (threadIdx.x < 32) next_pass<kQueryTile>(tok_seq, tok_pos, prev_seq, &pass_seq, &pass_last);
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
          const size_t src =
              (static_cast<size_t>(block) * cache.block_size + key % cache.block_size) *
                  row_stride +
              static_cast<size_t>(kv_head) * head_dim + d;
          kv = k_element(cache, src);
          vv = v_element(cache, src);
        }
        tile.k[row * tile.dp + d] = kv;
        tile.v[row * tile.dp + d] = vv;
      }
      __syncthreads();
      tile.consume(key0, n, scale,
                   [&](int row, int key) { return tok_seq[row] == seq && key <= tok_pos[row]; });
    }
    prev_seq = seq;
  }
  tile.finish([&](int row, int d, float value) {
    const int t = t0 + row;
    if (t < index.tokens) store_activation(y, (static_cast<int64_t>(t) * q_heads + head) * head_dim + d, value);
  });
}

constexpr int kPrefillWarps = 4;
constexpr int kPrefillThreads = kPrefillWarps * 32;
constexpr int kPrefillTokens = 16 * kPrefillWarps;
// One K/V stage, Q re-read from shared memory for every key tile: 3 blocks per SM (168 registers,
// 52 KB at head_dim 128), each tile's copies hidden behind the other blocks' products. Measured
// against two stages with Q in registers (2 blocks per SM at 245 registers), H100, 1024 tokens:
// 114.7 vs 124.7 us a layer under ncu, 30.0-30.6 vs 30.6-31.2 ms per prefill in 4 alternated pairs
// (docs/cuda-notes.md, session 15).
constexpr int kPrefillBlocksPerSm = 3;

// log2 of the cache's block size where it is a power of two (every real config: the staging
// shifts instead of dividing per row), else -1.
__device__ __forceinline__ int block_shift(int block_size) {
  return (block_size & (block_size - 1)) == 0 ? __ffs(block_size) - 1 : -1;
}

// The cache rows of keys [key0, key0 + 64) of a sequence for one kv head ((block * block_size +
// offset) * kv_heads + kv_head, -1 past `last` or where the block table has no block), found once
// per tile by its first 64 threads: every 16-byte piece of the tile then costs a shared-memory
// read and a multiply instead of a block-table load and the 64-bit index arithmetic (which was
// ~600 of the ~1300 instructions per thread and tile).
__device__ __forceinline__ void locate_key_rows(long long* rows, int key0, int last, const int32_t* table,
                                                const PagedLayer& cache, int shift, int kv_head) {
  if (threadIdx.x >= kMmaRows) return;
  const int key = key0 + static_cast<int>(threadIdx.x);
  long long row = -1;
  if (key <= last) {
    const int slot = shift >= 0 ? key >> shift : key / cache.block_size;
    const int block = table[slot];
    if (block >= 0 && block < cache.num_blocks)
      row = (static_cast<long long>(block) * cache.block_size + (key - slot * cache.block_size)) * cache.kv_heads +
            kv_head;
  }
  rows[threadIdx.x] = row;
}

// Piece e of a key tile: row r, columns d0 .. d0 + 7 of a padded row; where its K/V values sit in
// the cache (element offset, -1 past the keys, the head_dim or the cache) and the index of their
// row (its FP8 exponent).
struct KeyPiece {
  int r = 0, d0 = 0;
  long long src = -1, row = -1;
};

template <int kVecs>
__device__ __forceinline__ KeyPiece key_piece(unsigned e, const long long* rows, int head_dim) {
  KeyPiece p;
  p.r = static_cast<int>(e / kVecs);  // unsigned: a shift or a multiply, no sign fix-up
  p.d0 = static_cast<int>(e % kVecs) * 8;
  p.row = rows[p.r];
  if (p.row >= 0 && p.d0 < head_dim) p.src = p.row * head_dim + p.d0;
  return p;
}

// Eight FP8 codes of a row (at src, any alignment: tiny head dims) times the row scale as bf16,
// zeros past head_dim.
__device__ __forceinline__ uint4 fp8_piece_bf16(const uint8_t* codes, long long src, int d0, int head_dim,
                                                float scale) {
  uint32_t packed[4] = {};
  for (int i = 0; i < 8 && d0 + i < head_dim; ++i) {
    const __nv_bfloat16 value = __float2bfloat16_rn(e4m3_to_float(codes[src + i]) * scale);
    packed[i / 2] |= static_cast<uint32_t>(*reinterpret_cast<const uint16_t*>(&value)) << (16 * (i % 2));
  }
  return make_uint4(packed[0], packed[1], packed[2], packed[3]);
}

// A thread's pieces of a key tile: threadIdx.x + i * threads (KD of them), unrolled so that
// their loads are in flight together.
template <int kPadded>
constexpr int pieces_per_thread() {
  return (kMmaRows * (kPadded / 8) + kPrefillThreads - 1) / kPrefillThreads;
}
template <int kPadded>
__device__ __forceinline__ bool piece_exists(int i) {
  return threadIdx.x + i * kPrefillThreads < kMmaRows * (kPadded / 8);
}
template <int kPadded>
__device__ __forceinline__ KeyPiece thread_piece(int i, const long long* rows, int head_dim) {
  return piece_exists<kPadded>(i) ? key_piece<kPadded / 8>(threadIdx.x + i * kPrefillThreads, rows, head_dim)
                                  : KeyPiece{};
}

// An FP8 cache's key tile, widened to bf16 on the way (the copy engine cannot convert): every
// thread's loads are issued before any is widened, so they are in flight together.
template <int kPadded, class Attention>
__device__ void stage_fp8_key_tile(Attention& att, const long long* rows, const PagedLayer& cache) {
  constexpr int kPerThread = pieces_per_thread<kPadded>();
  const bool whole_pieces = cache.head_dim % 8 == 0;
  KeyPiece pieces[kPerThread];
  uint2 k_raw[kPerThread], v_raw[kPerThread];
  int8_t k_exp[kPerThread], v_exp[kPerThread];
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    pieces[i] = thread_piece<kPadded>(i, rows, cache.head_dim);
    const bool load = pieces[i].src >= 0;
    k_raw[i] = load && whole_pieces ? *reinterpret_cast<const uint2*>(cache.k8 + pieces[i].src) : uint2{0, 0};
    v_raw[i] = load && whole_pieces ? *reinterpret_cast<const uint2*>(cache.v8 + pieces[i].src) : uint2{0, 0};
    k_exp[i] = load ? cache.k_exp[pieces[i].row] : 0;
    v_exp[i] = load ? cache.v_exp[pieces[i].row] : 0;
  }
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    if (!piece_exists<kPadded>(i)) break;
    const KeyPiece& p = pieces[i];
    const float ks = kv_row_scale(k_exp[i]), vs = kv_row_scale(v_exp[i]);
    uint4 k = make_uint4(0, 0, 0, 0), v = k;
    if (p.src >= 0) {
      k = whole_pieces ? widen_e4m3x8_bf16(k_raw[i], ks) : fp8_piece_bf16(cache.k8, p.src, p.d0, cache.head_dim, ks);
      v = whole_pieces ? widen_e4m3x8_bf16(v_raw[i], vs) : fp8_piece_bf16(cache.v8, p.src, p.d0, cache.head_dim, vs);
    }
    *reinterpret_cast<uint4*>(att.k + p.r * att.stride + p.d0) = k;
    *reinterpret_cast<uint4*>(att.v + p.r * att.stride + p.d0) = v;
  }
}

// The block's copies of a key tile (the cache rows locate_key_rows found) into the K/V tile:
// cp.async of 16-byte pieces where head_dim is a multiple of 8 (every real model), zeros past the
// keys, the head_dim or the cache; 2-byte loads otherwise (tiny test dims); an FP8 cache through
// stage_fp8_key_tile. One commit group per call.
template <int kPadded, class Attention>
__device__ void stage_key_tile(Attention& att, const long long* rows, const PagedLayer& cache) {
  constexpr int kVecs = kPadded / 8;  // 16-byte pieces of a padded row
  const int head_dim = cache.head_dim;
  if (cache.k8 != nullptr) {
    stage_fp8_key_tile<kPadded>(att, rows, cache);
    copies_issued();
    return;
  }
  if (head_dim % 8 == 0) {
#pragma unroll
    for (int i = 0; i < pieces_per_thread<kPadded>(); ++i) {
      if (!piece_exists<kPadded>(i)) break;
      const KeyPiece p = thread_piece<kPadded>(i, rows, head_dim);
      const int at = p.r * att.stride + p.d0;
      copy16_or_zero(att.k + at, cache.k + (p.src >= 0 ? p.src : 0), p.src >= 0);
      copy16_or_zero(att.v + at, cache.v + (p.src >= 0 ? p.src : 0), p.src >= 0);
    }
    copies_issued();
    return;
  }
  for (unsigned e = threadIdx.x; e < kMmaRows * kVecs; e += kPrefillThreads) {
    const KeyPiece p = key_piece<kVecs>(e, rows, head_dim);
    const long long src = p.src;
    __nv_bfloat16* k_dst = att.k + p.r * att.stride + p.d0;
    __nv_bfloat16* v_dst = att.v + p.r * att.stride + p.d0;
    uint16_t kh[8] = {}, vh[8] = {};
    for (int i = 0; i < 8 && src >= 0 && p.d0 + i < head_dim; ++i) {
      kh[i] = cache.k[src + i];
      vh[i] = cache.v[src + i];
    }
    *reinterpret_cast<uint4*>(k_dst) =
        make_uint4(kh[0] | (uint32_t{kh[1]} << 16), kh[2] | (uint32_t{kh[3]} << 16),
                   kh[4] | (uint32_t{kh[5]} << 16), kh[6] | (uint32_t{kh[7]} << 16));
    *reinterpret_cast<uint4*>(v_dst) =
        make_uint4(vh[0] | (uint32_t{vh[1]} << 16), vh[2] | (uint32_t{vh[3]} << 16),
                   vh[4] | (uint32_t{vh[5]} << 16), vh[6] | (uint32_t{vh[7]} << 16));
  }
  copies_issued();
}

// y: f32, or bf16 where the o projection multiplies bf16 (rounded here, not by a conversion
// kernel after: the same bits).
template <int KD, class Out>
__global__ void __launch_bounds__(kPrefillThreads, kPrefillBlocksPerSm)
    paged_tiled_mma_kernel(const float* __restrict__ q, PagedLayer cache, TokenIndex index,
                           int q_heads, float scale_log2, Out* __restrict__ y) {
  wait_for_prior_kernels();
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  __shared__ int tok_seq[kPrefillTokens];
  __shared__ int tok_pos[kPrefillTokens];
  __shared__ int pass_seq;
  __shared__ int pass_last;
  __shared__ long long key_rows[2][kMmaRows];
  MmaAttention<KD, kPrefillWarps, /*kQInRegisters=*/false> att(reinterpret_cast<__nv_bfloat16*>(smem_bytes));
  constexpr int kPadded = 16 * KD;
  const int head_dim = cache.head_dim;
  // Blocks are issued in index order: the last token tiles (most keys under the causal mask)
  // of every head go first, so the short ones fill the tail of the grid.
  const int tiles_of_tokens = gridDim.x / q_heads;
  const int t0 = (tiles_of_tokens - 1 - static_cast<int>(blockIdx.x) / q_heads) * kPrefillTokens;
  const int head = blockIdx.x % q_heads;
  const int shift = block_shift(cache.block_size);
  const int kv_head = head / (q_heads / cache.kv_heads);
  const int capacity = index.max_blocks * cache.block_size;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;

  if (threadIdx.x < kPrefillTokens) {
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
  for (int e = threadIdx.x; e < kPrefillTokens * kPadded; e += kPrefillThreads) {
    const int row = e / kPadded;
    const int d = e % kPadded;
    const int t = t0 + row;
    const float value = (t < index.tokens && d < head_dim)
                            ? q[(static_cast<size_t>(t) * q_heads + head) * head_dim + d]
                            : 0.0f;
    att.q[row * att.stride + d] = __float2bfloat16_rn(value);
  }
  __syncthreads();
  att.load_q();

  int prev_seq = -1;
  while (true) {
    __syncthreads();
    if (warp == 0) next_pass<kPrefillTokens>(tok_seq, tok_pos, prev_seq, &pass_seq, &pass_last);
    __syncthreads();
    const int seq = pass_seq;
    const int last = pass_last;
    if (seq == INT_MAX) break;
    const int row = warp * 16 + lane / 4;
    const int limit[2] = {tok_seq[row] == seq ? tok_pos[row] : -1,
                          tok_seq[row + 8] == seq ? tok_pos[row + 8] : -1};
    int warp_last = max(limit[0], limit[1]);
    int warp_first = min(limit[0], limit[1]);  // every row of the warp sees keys <= this
    for (int o = 16; o > 0; o /= 2) {
      warp_last = max(warp_last, __shfl_xor_sync(0xffffffffu, warp_last, o));
      warp_first = min(warp_first, __shfl_xor_sync(0xffffffffu, warp_first, o));
    }
    const int32_t* table = index.block_tables + static_cast<size_t>(seq) * index.max_blocks;
    // Key tiles of 64, one at a time (the tile was consumed before the barrier that ends the
    // previous one). The next tile's cache rows are found while this one's copies fly; the
    // barrier before the products publishes them (their buffer was last read before the
    // barrier that ended the previous tile).
    const int tiles = (last + kMmaRows) / kMmaRows;
    locate_key_rows(key_rows[0], 0, last, table, cache, shift, kv_head);
    __syncthreads();
    for (int tile = 0; tile < tiles; ++tile) {
      const int key0 = tile * kMmaRows;
      stage_key_tile<kPadded>(att, key_rows[tile % 2], cache);
      if (tile + 1 < tiles)
        locate_key_rows(key_rows[(tile + 1) % 2], key0 + kMmaRows, last, table, cache, shift, kv_head);
      wait_staged<0>();
      __syncthreads();  // every thread's copies of this tile have landed
      if (key0 + kMmaRows - 1 <= warp_first)
        att.template consume<false>(key0, kMmaRows, scale_log2, limit);
      else if (key0 <= warp_last)
        att.consume(key0, min(kMmaRows, last + 1 - key0), scale_log2, limit);
      __syncthreads();  // the tile is consumed before its stage is refilled
    }
    prev_seq = seq;
  }
  att.finish(head_dim, [&](int r, int d, float value) {
    const int t = t0 + r;
    if (t < index.tokens) store_activation(y, (static_cast<int64_t>(t) * q_heads + head) * head_dim + d, value);
  });
}

}  // namespace


void paged_attention_tiled(const float* q, const PagedLayer& cache, const TokenIndex& index,
                           int q_heads, bool tensor_cores, Activations y, cudaStream_t stream) {
  if (index.tokens == 0) return;
  const float scale = 1.0f / sqrtf(static_cast<float>(cache.head_dim));
  with_activations(y, [&]<class Out>(Out* out) {
    if (tensor_cores) {
      const unsigned blocks =
          static_cast<unsigned>((index.tokens + kPrefillTokens - 1) / kPrefillTokens * q_heads);
      dispatch_head_dim_chunks(cache.head_dim, [&]<int KD>() {
        launch_kernel("paged_tiled_mma_kernel", paged_tiled_mma_kernel<KD, Out>, blocks, kPrefillThreads,
                      mma_smem_bytes(cache.head_dim, kPrefillWarps), stream, q, cache, index, q_heads,
                      scale * kLog2e, out);
      });
      return;
    }
    const dim3 grid((index.tokens + kQueryTile - 1) / kQueryTile, q_heads);
    const size_t smem = tile_smem_bytes(cache.head_dim);
    dispatch_head_dim_chunks(cache.head_dim, [&]<int DJ>() {
      launch_kernel("paged_tiled_kernel", paged_tiled_kernel<DJ, Out>, grid, kTileThreads, smem, stream, q, cache,
                    index, q_heads, scale, out);
    });
  });
}

void configure_paged_attention() {
  const auto allow = [&]<class Out>() {
    for_all_head_dim_chunks(
        [&]<int DJ>() { MOXIN_CUDA_CHECK(allow_tile_smem<DJ>(paged_tiled_kernel<DJ, Out>)); });
    for_all_head_dim_chunks(
        [&]<int KD>() { MOXIN_CUDA_CHECK((allow_mma_smem<KD, kPrefillWarps>(paged_tiled_mma_kernel<KD, Out>))); });
  };
  for_all_activation_types(allow);
}

}  // namespace moxin::cuda
