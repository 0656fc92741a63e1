// Decode attention over the paged cache on tensor cores, for batches that fill the GPU with
// (token, kv head) blocks: grid (splits, kv heads, tokens) and the block's end as the other
// split-K kernels (paged_attention_merge.cuh), but each warp streams 16-position tiles of K and
// V through its own ring of shared-memory stages (cp.async; kStages - 1 tiles in flight while
// one is multiplied, the block ids of the next tile looked up while this one lands) and
// multiplies them with mma.sync m16n8k16: S = Q K^T with the GQA group's heads as A rows and 16
// positions as two n8 tiles, then O += P V with P straight from S's accumulators.
//
// Precision: a group has at most 8 heads, so of the 16 A rows, row g carries bf16(q_g) and row
// g + 8 the bf16 residual q_g - bf16(q_g) (P likewise). K and V are bf16 in the cache, the
// products are exact and accumulate in f32, so rows g and g + 8 sum to q's scores within ~2^-17
// relative: the kernel answers at the f32 kernels' accuracy, on rows a group of 4 leaves idle.
// Both halves of a head sit in the same thread (accumulator rows g and g + 8), so they add
// without shuffles.
//
// FP8 cache (kFp8): the ring holds the tiles' E4M3 codes (half the bytes in flight for the same
// positions) and the 4-byte words around their rows' exponent bytes. When a tile has landed the
// warp widens its codes to f16 (their own values, exact: one cvt per two codes, no scale) and
// the products run as f16 mma.sync: Q enters as an f16 pair (hi + residual, 22 bits) scaled by a
// power of two 2^a into f16's range; the K rows' scales 2^e multiply S's columns (with 2^-a);
// the V rows' scales multiply P's columns, relative to the largest V exponent the warp has seen
// (a running maximum the accumulator is rescaled to, as for the softmax's maximum) and times
// 2^14, so that P V's f16 operand stays in [0, 2^14] and normal. Every scale is a power of two:
// the kernel computes on exactly the dequantized cache. (v1 widened into bf16 with the scale
// applied: ~26 instructions per 8 codes, which made the kernel slower than bf16's; this is 6.)
//
// RoPE fused in (kRope, bf16 cache, a decode step: kernels.hpp's rope_paged_attention_mma): q
// comes from the projection's q | k | v rows and each block rotates its group's heads (a lane holds
// both halves of its pairs: dims d and d + kD / 2 sit in k-steps ks and ks + kSteps / 2 at the
// same offsets); the block whose split holds the token's own position first stores the token's
// rotated k and its v for its kv head, then a block barrier, then the walk. That replaces a
// separate rope_kv_write launch (~6 us of latency a layer at batch 1, session 19) and its boundary.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "backend/cuda/attention_mma.cuh"
#include "backend/cuda/cp_async.cuh"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/fp8_kv.cuh"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/paged_attention_merge.cuh"
#include "backend/cuda/pow2.cuh"
#include "backend/cuda/rope.cuh"

namespace moxin::cuda {
namespace {

using namespace split_k;

constexpr int kTilePositions = 16;  // positions per warp step: the k16 of P V
constexpr int kStages = 3;          // per warp: one tile multiplied while two are in flight

template <int kD>
constexpr int staged_row() {
  return kD + 8;  // bf16 elements: 16-byte ldmatrix rows of consecutive positions in distinct banks
}
template <int kD>
constexpr int bf16_tile_elems() {
  return kTilePositions * staged_row<kD>();
}
// An FP8 ring stage: K codes, V codes ([16][kD] bytes each), the K and V exponent words ([16]
// each) and the byte position of each row's exponent in its word ([16]).
template <int kD>
constexpr int fp8_stage_bytes() {
  return 2 * kTilePositions * kD + 2 * kTilePositions * 4 + kTilePositions;
}
// FP8: the bytes of the ring's stages, rounded to 16 (the widened tiles follow).
template <int kD>
constexpr size_t fp8_ring_bytes() {
  return (size_t{kStages} * fp8_stage_bytes<kD>() + 15) / 16 * 16;
}
// Per warp: the ring (bf16 tiles), or FP8 stages, the f16 K and V tiles they are widened into
// and the widened tile's row scales (K: f32 2^e; V: the exponent).
template <int kD, bool kFp8>
constexpr size_t warp_smem_bytes() {
  constexpr size_t tiles = size_t{2} * bf16_tile_elems<kD>() * sizeof(bf16_bits);
  return kFp8 ? fp8_ring_bytes<kD>() + tiles + 2 * kTilePositions * 4 : kStages * tiles;
}
template <int kD, bool kFp8>
constexpr size_t mma_decode_smem_bytes() {
  return size_t{kSplitWarps} * warp_smem_bytes<kD, kFp8>();
}
static_assert(mma_decode_smem_bytes<64, false>() >= sizeof(float) * kSplitWarps * kMaxGroup * kMaxHeadDim &&
                  mma_decode_smem_bytes<64, true>() >= sizeof(float) * kSplitWarps * kMaxGroup * kMaxHeadDim,
              "the merge reuses the staging for the warps' outputs");

// 4 bytes, or 4 zero bytes where `valid` is false.
__device__ __forceinline__ void copy4_or_zero(void* smem, const void* global, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(smem_address(smem)), "l"(global),
               "r"(valid ? 4 : 0)
               : "memory");
}

// The K and V rows of a 16-position tile into shared memory (rows kDstRowBytes apart), a warp's
// lanes copying 16-byte pieces (coalesced: kRowBytes / 16 lanes per row); row r is at element
// offset `offset` of lane r (kElemBytes each), or zeros where that is -1.
template <int kRowBytes, int kDstRowBytes, int kElemBytes>
__device__ __forceinline__ void copy_tile_rows(void* k_dst, void* v_dst, const void* k_src, const void* v_src,
                                               long long offset, int lane) {
  constexpr int kPieces = kRowBytes / 16;
  constexpr int kRowsPerPass = 32 / kPieces;
  const int col = (lane % kPieces) * 16;
#pragma unroll
  for (int pass = 0; pass < kTilePositions / kRowsPerPass; ++pass) {
    const int row = pass * kRowsPerPass + lane / kPieces;
    const long long off = __shfl_sync(0xffffffffu, offset, row);
    const size_t at = off >= 0 ? static_cast<size_t>(off) * kElemBytes + col : 0;
    copy16_or_zero(static_cast<unsigned char*>(k_dst) + row * kDstRowBytes + col,
                   static_cast<const unsigned char*>(k_src) + at, off >= 0);
    copy16_or_zero(static_cast<unsigned char*>(v_dst) + row * kDstRowBytes + col,
                   static_cast<const unsigned char*>(v_src) + at, off >= 0);
  }
}

// A V exponent below every real one (and below the poison mark): rows outside the context.
constexpr int kNoRow = -1024;
// P's columns are scaled to [0, 2^kPScale]: f16 keeps 22 bits of (hi, residual) down to
// 2^-28 of the largest (normal range), far below what the f32 sums resolve.
constexpr int kPScale = 14;

// 2^n for n <= 127, 0 below the normal range.
__device__ __forceinline__ float pow2_or_zero(int n) { return n < -126 ? 0.0f : pow2(n); }

// Widens FP8 ring stage `stage` (the warp's, landed) into the f16 K and V tiles at `tile`, and
// its rows' K scales and V exponents into k_scale / v_exp (kNoRow for rows not in `valid`).
template <int kD>
__device__ __forceinline__ void widen_fp8_stage(const unsigned char* stage, bf16_bits* tile, float* k_scale,
                                                int* v_exp, unsigned valid, int lane) {
  constexpr int kRow = staged_row<kD>();
  constexpr int kChunks = kD / 8;  // 8-code pieces of a row
  const auto* words = reinterpret_cast<const uint32_t*>(stage + 2 * kTilePositions * kD);
  const unsigned char* shifts = stage + 2 * kTilePositions * kD + 2 * kTilePositions * 4;
#pragma unroll
  for (int c = lane; c < 2 * kTilePositions * kChunks; c += 32) {
    const int kv = c / (kTilePositions * kChunks);  // 0: K, 1: V
    const int row = (c / kChunks) % kTilePositions;
    const int col = (c % kChunks) * 8;
    const uint2 raw = *reinterpret_cast<const uint2*>(stage + (kv * kTilePositions + row) * kD + col);
    *reinterpret_cast<uint4*>(tile + kv * bf16_tile_elems<kD>() + row * kRow + col) = widen_e4m3x8_f16(raw);
  }
  // Lane r < 16: K row r's word; lane 16 + r: V row r's.
  const int row = lane % kTilePositions;
  const int exponent = static_cast<int8_t>(words[lane] >> shifts[row]);
  if (lane < kTilePositions)
    k_scale[row] = kv_row_scale(exponent);
  else
    v_exp[row] = (valid >> row) & 1u ? exponent : kNoRow;
}

// (a, b) as bf16 pairs: hi = bf16(a, b), lo = bf16 of what hi misses.
__device__ __forceinline__ void split_bf16(float a, float b, uint32_t& hi, uint32_t& lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  const float2 back = __bfloat1622float2(h);
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = pack_bf16(a - back.x, b - back.y);
}

// The same in f16.
__device__ __forceinline__ void split_f16(float a, float b, uint32_t& hi, uint32_t& lo) {
  const __half2 h = __floats2half2_rn(a, b);
  const float2 back = __half22float2(h);
  const __half2 r = __floats2half2_rn(a - back.x, b - back.y);
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = *reinterpret_cast<const uint32_t*>(&r);
}

// The a with amax 2^a in [2^14, 2^15): a head's q times 2^a, and the residuals of its f16
// rounding, are normal f16 down to 2^-24 of its largest. 0 for amax 0, inf or NaN (those
// spread as they do in bf16).
__device__ __forceinline__ int f16_range_exponent(float amax) {
  if (!(amax > 0.0f) || isinf(amax)) return 0;
  int k = 0;
  frexpf(amax, &k);  // amax < 2^k
  return min(max(15 - k, -126), 126);
}

template <bool kFp8>
__device__ __forceinline__ void mma_kv(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (kFp8)
    mma_f16(d, a, b0, b1);
  else
    mma_bf16(d, a, b0, b1);
}

// The kRope block's part before its walk: the cosines and sines of the token's pairs into
// rope_cos / rope_sin (thread i: pair i), and, where this block's split [begin, end) holds the
// token's own position (context - 1), the token's rotated k and its v for this kv head stored
// into its cache slot (as rope_kv_write stores them). The caller's barrier publishes both.
template <int kD>
__device__ __forceinline__ void rope_and_new_row(const DecodeRope& rope, const PagedLayer& cache, const float* qkv_row,
                                                 int q_heads, int kv_head, int pos, int context, int begin, int end,
                                                 const int32_t* table, float* rope_cos, float* rope_sin) {
  constexpr int kHalf = kD / 2;
  static_assert(kSplitWarps * 32 >= kD, "a thread per k pair and per v pair");
  const int i = threadIdx.x;
  float c = 0.0f, s = 0.0f;
  if (i < kHalf) {
    rope_cos_sin(pos, rope.frequencies.inv[i], c, s);
    rope_cos[i] = c;
    rope_sin[i] = s;
  }
  const int own = context - 1;
  if (context == 0 || own < begin || own >= end || i >= kD) return;
  const int block = table[own / cache.block_size];
  if (block < 0 || block >= cache.num_blocks) return;  // no slot: nothing stored (as rope_kv_write)
  const size_t at = (static_cast<size_t>(block) * cache.block_size + own % cache.block_size) *
                        cache.kv_heads * kD + static_cast<size_t>(kv_head) * kD;
  const float* k = qkv_row + static_cast<size_t>(q_heads + kv_head) * kD;
  const float* v = qkv_row + static_cast<size_t>(q_heads + cache.kv_heads + kv_head) * kD;
  auto* kd = reinterpret_cast<__nv_bfloat16*>(cache.k) + at;
  auto* vd = reinterpret_cast<__nv_bfloat16*>(cache.v) + at;
  if (i < kHalf) {
    float k1, k2;
    rotate_pair(k[i], k[i + kHalf], c, s, k1, k2);
    kd[i] = __float2bfloat16_rn(k1);
    kd[i + kHalf] = __float2bfloat16_rn(k2);
  } else {
    const int j = i - kHalf;
    vd[j] = __float2bfloat16_rn(v[j]);
    vd[j + kHalf] = __float2bfloat16_rn(v[j + kHalf]);
  }
}

// kRope: q is unused and `rope` holds the q | k | v rows to rotate (see the file comment).
// Eight warps of shared memory a block: two blocks an SM at four warps, one at eight.
template <int kD, bool kCluster, bool kFp8, bool kRope>
__global__ void __launch_bounds__(kSplitWarps * 32, 8 / kSplitWarps)
    paged_mma_kernel(const float* __restrict__ q, PagedLayer cache, TokenIndex index, int q_heads,
                     int splits, float scale, float* __restrict__ partial,
                     int* __restrict__ counters, float* __restrict__ y, DecodeRope rope) {
  static_assert(!(kRope && kFp8), "the fused RoPE stores bf16 rows");
  constexpr int kRow = staged_row<kD>();
  constexpr int kSteps = kD / 16;                   // k16 steps of Q K^T, n16 steps of P V
  constexpr int kTileElems = bf16_tile_elems<kD>();
  extern __shared__ __align__(16) unsigned char staging[];
  __shared__ unsigned valid_rows[kSplitWarps][kStages];  // bit r: row r of the stage is real
  __shared__ BlockMerge merge;
  __shared__ float rope_cos[kRope ? kD / 2 : 1], rope_sin[kRope ? kD / 2 : 1];

  // The unfused kernel reads q and the new rows, which the previous kernels write, from its start.
  if constexpr (!kRope) wait_for_prior_kernels();
  const int split = blockIdx.x;
  const int kv_head = blockIdx.y;
  const int token = blockIdx.z;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;  // this lane's head of the group (accumulator rows g and g + 8)
  const int t = lane % 4;
  const int group = q_heads / cache.kv_heads;
  const int context = token_context(index, index.max_blocks * cache.block_size, token);
  const auto [begin, end] = split_range(context, split, splits);
  const int32_t* table =
      index.block_tables + static_cast<size_t>(max(index.token_seq[token], 0)) * index.max_blocks;

  // The warp's tiles: positions first + i * kWarpStride .. + 15.
  constexpr int kWarpStride = kSplitWarps * kTilePositions;
  const int first = begin + warp * kTilePositions;
  const int tiles = first < end ? (end - first + kWarpStride - 1) / kWarpStride : 0;
  const size_t row_stride = static_cast<size_t>(cache.kv_heads) * kD;
  unsigned char* warp_smem = staging + warp * warp_smem_bytes<kD, kFp8>();
  auto* ring = reinterpret_cast<bf16_bits*>(warp_smem);  // bf16 stages
  // FP8: the stages, then the f16 tiles every stage is widened into and their row scales.
  unsigned char* fp8_ring = warp_smem;
  auto* widened = reinterpret_cast<bf16_bits*>(warp_smem + fp8_ring_bytes<kD>());
  auto* k_scale = reinterpret_cast<float*>(widened + 2 * kTileElems);
  int* v_exp = reinterpret_cast<int*>(k_scale + kTilePositions);
  int v_run = kNoRow;  // FP8: the largest V exponent of the warp's rows so far

  // Element offset of row lane % 16 of tile i in the cache, -1 past the context or for a block
  // id outside the cache.
  auto row_offset = [&](int i) -> long long {
    const int p = first + i * kWarpStride + lane % kTilePositions;
    if (i >= tiles || p >= end) return -1;
    const int block = table[p / cache.block_size];
    if (block < 0 || block >= cache.num_blocks) return -1;
    return static_cast<long long>(
        (static_cast<size_t>(block) * cache.block_size + p % cache.block_size) * row_stride +
        static_cast<size_t>(kv_head) * kD);
  };
  // Tile i's K and V rows into stage i % kStages (copy_tile_rows);
  // always one commit group, empty past the last tile, so that the waits count tiles.
  auto issue = [&](int i, long long offset) {
    if (i < tiles) {
      if constexpr (kFp8) {
        unsigned char* k_codes = fp8_ring + (i % kStages) * fp8_stage_bytes<kD>();
        unsigned char* v_codes = k_codes + kTilePositions * kD;
        auto* words = reinterpret_cast<uint32_t*>(v_codes + kTilePositions * kD);
        unsigned char* shifts = reinterpret_cast<unsigned char*>(words + 2 * kTilePositions);
        copy_tile_rows<kD, kD, 1>(k_codes, v_codes, cache.k8, cache.v8, offset, lane);
        // Lanes 0-15 fetch row lane's K exponent word, lanes 16-31 row lane - 16's V word (a
        // missing row's word is zero: scale 1 for its zero codes).
        const size_t exponent = offset >= 0 ? static_cast<size_t>(offset) / kD : 0;
        const int8_t* exponents = lane < kTilePositions ? cache.k_exp : cache.v_exp;
        copy4_or_zero(words + lane, exponents + (exponent & ~size_t{3}), offset >= 0);
        if (lane < kTilePositions) shifts[lane] = static_cast<unsigned char>(8 * (exponent & 3));
      } else {
        bf16_bits* k_stage = ring + (i % kStages) * 2 * kTileElems;
        copy_tile_rows<2 * kD, 2 * kRow, 2>(k_stage, k_stage + kTileElems, cache.k, cache.v, offset, lane);
      }
      const unsigned valid = __ballot_sync(0xffffffffu, offset >= 0) & 0xffffu;
      if (lane == 0) valid_rows[warp][i % kStages] = valid;
    }
    copies_issued();
  };

  // kRope: the tiles of a warp's first stages that lie wholly before the token's own position
  // hold rows earlier steps wrote (and the block tables and positions are uploaded before the
  // step's kernels run), so they are requested before waiting on the q | k | v projection: under
  // PDL (launch_kernel_prefetching) the cache's bytes stream while that GEMV drains. The tile
  // that holds the own position waits for its row to be stored below.
  int prefetched = 0;
  if constexpr (kRope) {
    const int own = context - 1;
    while (prefetched < kStages - 1 && first + prefetched * kWarpStride + kTilePositions <= own) {
      issue(prefetched, row_offset(prefetched));
      ++prefetched;
    }
    wait_for_prior_kernels();
  }

  // Q as A fragments (rows g: bf16(q * scale), rows g + 8: the residual; FP8: in f16, times
  // 2^a); heads past the group are zero rows.
  uint32_t qa[kSteps][4];
  float q_unscale = 1.0f;  // FP8: 2^-a
  {
    // kRope: this token's q | k | v row, whose q heads come first.
    const float* qkv_row =
        kRope ? rope.qkv + static_cast<size_t>(token) * (q_heads + 2 * cache.kv_heads) * kD : nullptr;
    const float* q_row = kRope ? qkv_row : q + static_cast<size_t>(token) * q_heads * kD;
    const float* qh = q_row + static_cast<size_t>(kv_head * group + g) * kD + 2 * t;
    float2 a[kSteps], b[kSteps];
    float amax = 0.0f;
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks) {
      a[ks] = g < group ? *reinterpret_cast<const float2*>(qh + ks * 16) : float2{0, 0};
      b[ks] = g < group ? *reinterpret_cast<const float2*>(qh + ks * 16 + 8) : float2{0, 0};
    }
    if constexpr (kRope) {
      rope_and_new_row<kD>(rope, cache, qkv_row, q_heads, kv_head, rope.positions[token], context, begin, end, table,
                           rope_cos, rope_sin);
      __syncthreads();  // the cosines and sines, and the new row for the walk's copies
      // Dims ks * 16 + 2t + {0, 1} (a) and + 8 (b) of the first half pair with the same offsets
      // kSteps / 2 steps on.
#pragma unroll
      for (int ks = 0; ks < kSteps / 2; ++ks) {
        const int h = ks + kSteps / 2;
        const int i = ks * 16 + 2 * t;
        rotate_pair(a[ks].x, a[h].x, rope_cos[i], rope_sin[i], a[ks].x, a[h].x);
        rotate_pair(a[ks].y, a[h].y, rope_cos[i + 1], rope_sin[i + 1], a[ks].y, a[h].y);
        rotate_pair(b[ks].x, b[h].x, rope_cos[i + 8], rope_sin[i + 8], b[ks].x, b[h].x);
        rotate_pair(b[ks].y, b[h].y, rope_cos[i + 9], rope_sin[i + 9], b[ks].y, b[h].y);
      }
    }
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks) {
      a[ks] = {a[ks].x * scale, a[ks].y * scale};
      b[ks] = {b[ks].x * scale, b[ks].y * scale};
      amax = fmaxf(amax, fmaxf(fmaxf(fabsf(a[ks].x), fabsf(a[ks].y)), fmaxf(fabsf(b[ks].x), fabsf(b[ks].y))));
    }
    float up = 1.0f;
    if constexpr (kFp8) {
      // The quad holds all of head g's dims.
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
      const int e = f16_range_exponent(amax);
      up = pow2(e);
      q_unscale = pow2(-e);
    }
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks) {
      if constexpr (kFp8) {
        split_f16(a[ks].x * up, a[ks].y * up, qa[ks][0], qa[ks][1]);
        split_f16(b[ks].x * up, b[ks].y * up, qa[ks][2], qa[ks][3]);
      } else {
        split_bf16(a[ks].x, a[ks].y, qa[ks][0], qa[ks][1]);
        split_bf16(b[ks].x, b[ks].y, qa[ks][2], qa[ks][3]);
      }
    }
  }


  float m = -INFINITY;  // running max of head g (the same in the lane's quad)
  float l = 0.0f;       // this lane's share of head g's softmax sum
  float o[2 * kSteps][4];
#pragma unroll
  for (int n = 0; n < 2 * kSteps; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[n][e] = 0.0f;

  long long next = row_offset(prefetched);
  for (int i = prefetched; i < kStages - 1; ++i) {
    const long long offset = next;
    next = row_offset(i + 1);
    issue(i, offset);
  }
  for (int i = 0; i < tiles; ++i) {
    {
      const long long offset = next;
      next = row_offset(i + kStages);
      issue(i + kStages - 1, offset);
    }
    wait_staged<kStages - 1>();  // tile i has landed
    __syncwarp();
    const unsigned valid = valid_rows[warp][i % kStages];
    const bf16_bits* k_stage = ring + (i % kStages) * 2 * kTileElems;
    if constexpr (kFp8) {
      widen_fp8_stage<kD>(fp8_ring + (i % kStages) * fp8_stage_bytes<kD>(), widened, k_scale, v_exp, valid, lane);
      __syncwarp();
      k_stage = widened;
    }
    const bf16_bits* v_stage = k_stage + kTileElems;

    float s[2][4] = {};
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks) {
      uint32_t b[4];
      ldmatrix_x4(b, k_stage + (lane % 8 + (lane / 16) * 8) * kRow + ks * 16 + ((lane / 8) % 2) * 8);
      mma_kv<kFp8>(s[0], qa[ks], b[0], b[1]);
      mma_kv<kFp8>(s[1], qa[ks], b[2], b[3]);
    }
    // Head g's scores at positions 8 nt + 2t + e: rows g and g + 8 added (FP8: times the K
    // row's 2^e, then 2^-a; one at a time, so that neither product leaves the normal range).
    float p[2][2];
    float tile_max = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int row = nt * 8 + 2 * t + e;
        float score = s[nt][e] + s[nt][e + 2];
        if constexpr (kFp8) score = score * k_scale[row] * q_unscale;
        p[nt][e] = (valid >> row) & 1u ? score : -INFINITY;
        tile_max = fmaxf(tile_max, p[nt][e]);
      }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    const float m_new = fmaxf(m, tile_max);
    const float base = m_new == -INFINITY ? 0.0f : m_new;
    const float corr = expf(m - base);  // 0 while m is -inf
    m = m_new;
    l *= corr;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        p[nt][e] = expf(p[nt][e] - base);  // 0 for rows outside the context
        l += p[nt][e];
      }
    float o_corr = corr;
    if constexpr (kFp8) {
      // P's columns times the V rows' 2^e relative to the largest V exponent so far (the
      // accumulator follows that maximum as it follows the softmax's), times 2^kPScale.
      const int tile_e = __reduce_max_sync(0xffffffffu, v_exp[lane % kTilePositions]);
      const int e_new = max(v_run, tile_e);
      if (v_run != kNoRow) o_corr *= pow2_or_zero(v_run - e_new);
      v_run = e_new;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int ev = v_exp[nt * 8 + 2 * t + e];
          p[nt][e] *= ev == kNoRow ? 0.0f
                      : ev == kKvPoisonedExponent ? kv_row_scale(ev)
                                                  : pow2_or_zero(ev - e_new + kPScale);
        }
    }
    // Past the first tiles the maximum rarely moves: skip the 2 kD multiplies by 1 (warp-uniform).
    if (__any_sync(0xffffffffu, o_corr != 1.0f)) {
#pragma unroll
      for (int n = 0; n < 2 * kSteps; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[n][e] *= o_corr;
    }

    // P as the A operand over the tile's 16 positions: rows g = bf16(p), rows g + 8 = residual
    // (FP8: f16).
    uint32_t pa[4];
    if constexpr (kFp8) {
      split_f16(p[0][0], p[0][1], pa[0], pa[1]);
      split_f16(p[1][0], p[1][1], pa[2], pa[3]);
    } else {
      split_bf16(p[0][0], p[0][1], pa[0], pa[1]);
      split_bf16(p[1][0], p[1][1], pa[2], pa[3]);
    }
#pragma unroll
    for (int dp = 0; dp < kSteps; ++dp) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, v_stage + (lane % 8 + ((lane / 8) % 2) * 8) * kRow + dp * 16 + (lane / 16) * 8);
      mma_kv<kFp8>(o[2 * dp], pa, b[0], b[1]);
      mma_kv<kFp8>(o[2 * dp + 1], pa, b[2], b[3]);
    }
    __syncwarp();  // the stage is read before a later issue() refills it
  }
  wait_staged<0>();  // no copy may land in the staging once the merge reuses it
  allow_dependents();

  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  __syncthreads();  // every warp is done with its ring: the warps' outputs go there
  auto* sm_acc = reinterpret_cast<float(*)[kMaxGroup][kMaxHeadDim]>(staging);
  // FP8: the accumulator holds O 2^(kPScale - v_run).
  const float o_scale = kFp8 && v_run != kNoRow ? pow2(max(v_run, -126)) * pow2(-kPScale) : 1.0f;
  if (g < group) {
    if (t == 0) {
      merge.m[warp][g] = m;
      merge.l[warp][g] = l;
    }
#pragma unroll
    for (int n = 0; n < 2 * kSteps; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) sm_acc[warp][g][n * 8 + 2 * t + e] = (o[n][e] + o[n][e + 2]) * o_scale;
  }
  if constexpr (kCluster)
    merge_cluster(merge, sm_acc, token, kv_head, q_heads, group, kD, y);
  else
    merge_block(merge, sm_acc, token, kv_head, cache.kv_heads, split, splits, q_heads, group, kD,
                partial, counters, y);
}

// Calls f(kernel, smem bytes) for this head_dim, merge and cache format, with or without the
// fused RoPE (bf16 caches only).
template <class F>
void with_mma_kernel(int head_dim, bool cluster, bool fp8, bool rope, F f) {
  auto by_format = [&](auto d, auto c) {
    constexpr int kD = decltype(d)::value;
    constexpr bool kC = decltype(c)::value;
    if (fp8)
      f(paged_mma_kernel<kD, kC, true, false>, mma_decode_smem_bytes<kD, true>());
    else if (rope)
      f(paged_mma_kernel<kD, kC, false, true>, mma_decode_smem_bytes<kD, false>());
    else
      f(paged_mma_kernel<kD, kC, false, false>, mma_decode_smem_bytes<kD, false>());
  };
  auto by_cluster = [&](auto d) {
    if (cluster)
      by_format(d, std::true_type{});
    else
      by_format(d, std::false_type{});
  };
  if (head_dim == 64)
    by_cluster(std::integral_constant<int, 64>{});
  else
    by_cluster(std::integral_constant<int, 128>{});
}

// Largest cluster of splits the device runs with this kernel's shared memory (16 where
// non-portable clusters fit, else the portable 8); set by configure_paged_attention_mma().
int max_mma_cluster_splits = 8;

}  // namespace

bool paged_attention_mma_fits(int group, int head_dim) {
  return group >= 1 && group <= kMaxGroup && (head_dim == 64 || head_dim == 128);
}

namespace {

// paged_attention_mma and its fused-RoPE form (rope.qkv set, bf16 cache).
void launch_mma(const float* q, const DecodeRope& rope, const PagedLayer& cache, const TokenIndex& index,
                int q_heads, int splits, bool cluster_merge, float* partial, int* counters, float* y,
                cudaStream_t stream) {
  if (index.tokens == 0) return;
  const int group = q_heads / cache.kv_heads;
  const bool fused = rope.qkv != nullptr;
  MOXIN_CHECK(splits >= 1 && splits <= kMaxSplits && paged_attention_mma_fits(group, cache.head_dim),
              "[cuda] paged_attention_mma: ", splits, " splits (1..", kMaxSplits, "), group ", group,
              " (1..", kMaxGroup, "), head_dim ", cache.head_dim, " (64, 128)");
  MOXIN_CHECK(!fused || cache.k8 == nullptr, "[cuda] rope_paged_attention_mma: the fused RoPE stores bf16 rows; an "
              "FP8 cache takes rope_kv_write, then paged_attention_mma");
  const bool cluster = cluster_merge && splits > 1 && splits <= max_mma_cluster_splits;
  with_mma_kernel(cache.head_dim, cluster, cache.k8 != nullptr, fused, [&](auto kernel, size_t smem) {
    launch_split_k(fused ? "paged_mma_kernel (RoPE fused)" : "paged_mma_kernel", kernel, smem, cluster, fused, q, cache,
                   index, q_heads, splits, partial, counters, y, stream, rope);
  });
}

}  // namespace

void paged_attention_mma(const float* q, const PagedLayer& cache, const TokenIndex& index,
                         int q_heads, int splits, bool cluster_merge, float* partial, int* counters,
                         float* y, cudaStream_t stream) {
  launch_mma(q, DecodeRope{}, cache, index, q_heads, splits, cluster_merge, partial, counters, y, stream);
}

void rope_paged_attention_mma(const DecodeRope& rope, const PagedLayer& cache, const TokenIndex& index, int q_heads,
                              int splits, bool cluster_merge, float* partial, int* counters, float* y,
                              cudaStream_t stream) {
  MOXIN_CHECK(rope.qkv != nullptr && rope.positions != nullptr, "[cuda] rope_paged_attention_mma: no qkv or positions");
  launch_mma(nullptr, rope, cache, index, q_heads, splits, cluster_merge, partial, counters, y, stream);
}

void configure_paged_attention_mma() {
  for (int head_dim : {64, 128})
    for (bool cluster : {false, true})
      for (bool fp8 : {false, true})
        for (bool rope : {false, true}) {
          if (fp8 && rope) continue;
          with_mma_kernel(head_dim, cluster, fp8, rope, [&](auto kernel, size_t smem) {
            MOXIN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                  static_cast<int>(smem)));
            if (cluster)
              MOXIN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
          });
        }
  // The bf16 kernel with the fused RoPE has the most shared memory: its cluster limit holds for
  // the others too.
  with_mma_kernel(kMaxHeadDim, true, false, true, [&](auto kernel, size_t smem) {
    max_mma_cluster_splits = largest_cluster_splits(kernel, smem);
  });
}

}  // namespace moxin::cuda
