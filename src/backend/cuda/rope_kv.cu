// Rotary position embedding (NeoX rotate-half, as transformers' Mistral applies it) fused with
// the write of the new K/V rows into the paged cache: one kernel reads the packed q | k | v
// projection, writes the rotated q and stores the rotated k and the v as bf16, or, in an FP8
// cache, each row as E4M3 codes with its exponent byte (fp8_kv.cuh).
#include <cuda_bf16.h>

#include <algorithm>

#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/fp8_kv.cuh"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/rope.cuh"
#include "core/rope_frequency.hpp"

namespace moxin::cuda {
namespace {

constexpr int kRopeThreads = 256;

// Heads per block for a few tokens (and always with an FP8 cache, whose rows a block stages): a
// block of kRopeThreads threads rotates (or copies) kHeadsPerBlock heads at once, one thread per
// pair, so a lone decode token is spread over ~12 blocks instead of one block walking 48 heads
// (the whole kernel was ~8 us of a ~140 us batch-1 layer under ncu). Many tokens (prefill) take
// more heads per block, aiming at one wave of kRopeBlocksPerSm blocks per SM: the accurate sines
// and cosines are microseconds of latency per block, and 12 blocks per token over 1024 tokens
// ran 12 waves of it (51 us a layer on an H100, session 14).
constexpr int kHeadsPerBlock = 4;
constexpr int kRopeBlocksPerSm = 8;

// Grid (tokens, blocks per token). Work units of a token: its q heads and kv heads to rotate,
// then its kv heads of v to copy; block y takes units heads_per_block * y .. + heads_per_block - 1
// (FP8 cache: at most kHeadsPerBlock).
// The angle, cosine and sine as rope.cuh computes them (transformers' f32 order). Each thread computes the
// angle of its own pair in registers (the same pair in every iteration where half divides the
// block), with no shared table and no barrier in front of the loads, so the token's slot lookup
// and its q | k | v values need not wait for the sines. (Measured neutral against a per-block
// table of f64 powers behind a __syncthreads: batch-1 steps 6.00-6.04 ms against 6.02-6.04 on an
// H100, session 19; the frequencies now come from the CPU backend's own function.) The token's
// K/V slot is block_tables[seq][pos / bs], slot pos % bs. An FP8 cache's rows (whole heads: the
// exponent needs the row's largest magnitude) go through shared memory and are quantized one
// warp per row.
__global__ void __launch_bounds__(kRopeThreads)
    rope_kv_write_kernel(const float* __restrict__ qkv, QkvScales scales, const int32_t* __restrict__ positions,
                         int q_heads, RopeFrequencies frequencies, float* __restrict__ q, PagedLayer cache,
                         TokenIndex index, int heads_per_block) {
  wait_for_prior_kernels();
  __shared__ float fp8_rows[kHeadsPerBlock][kMaxHeadDim];  // this block's K/V rows (FP8 cache)
  const bool fp8 = cache.k8 != nullptr;
  const int token = blockIdx.x;
  const int head_dim = cache.head_dim;
  const int half = head_dim / 2;
  const int kv_row = cache.kv_heads * head_dim;
  const int pos = positions[token];

  // The token's K/V cache row, or null where it has no valid slot (nothing is stored then).
  __nv_bfloat16* kd = nullptr;
  __nv_bfloat16* vd = nullptr;
  size_t slot_row = 0;  // element offset of the token's slot (all kv heads)
  bool has_slot = false;
  const int seq = index.token_seq[token];
  const int cache_pos = index.token_pos[token];
  if (seq >= 0 && seq < index.num_seqs && cache_pos >= 0 && cache_pos / cache.block_size < index.max_blocks) {
    const int block = index.block_tables[static_cast<size_t>(seq) * index.max_blocks +
                                         cache_pos / cache.block_size];
    if (block >= 0 && block < cache.num_blocks) {
      slot_row = (static_cast<size_t>(block) * cache.block_size + cache_pos % cache.block_size) * kv_row;
      has_slot = true;
      if (!fp8) {
        kd = reinterpret_cast<__nv_bfloat16*>(cache.k) + slot_row;
        vd = reinterpret_cast<__nv_bfloat16*>(cache.v) + slot_row;
      }
    }
  }

  const float* row = qkv + static_cast<size_t>(token) * (q_heads * head_dim + 2 * kv_row);
  float* q_row = q + static_cast<size_t>(token) * q_heads * head_dim;
  // Column `col` of the token's q | k | v, scaled as scale_rows_columns would have scaled an FP8
  // GEMM's products (rounded apart from what follows: the bits of that pass).
  const float row_scale = scales.rows != nullptr ? scales.rows[token] : 1.0f;
  const auto at = [&](int col) {
    return scales.rows != nullptr ? __fmul_rn(row[col], row_scale * scales.columns[col]) : row[col];
  };
  const int k = q_heads * head_dim, v = k + kv_row;  // where k and v start in the row
  const int units = q_heads + 2 * cache.kv_heads;
  const int first = blockIdx.y * heads_per_block;
  const int last = min(first + heads_per_block, units);
  int angle_of = -1;  // the pair whose cosine and sine c, s hold
  float c = 0.0f, s = 0.0f;
  for (int idx = threadIdx.x; idx < (last - first) * half; idx += kRopeThreads) {
    const int unit = first + idx / half;
    const int i = idx % half;
    if (unit < q_heads + cache.kv_heads && i != angle_of) {
      rope_cos_sin(pos, frequencies.inv[i], c, s);
      angle_of = i;
    }
    if (unit < q_heads) {
      const int base = unit * head_dim;
      rotate_pair(at(base + i), at(base + i + half), c, s, q_row[base + i], q_row[base + i + half]);
    } else if (unit < q_heads + cache.kv_heads) {
      if (!has_slot) continue;
      const int base = (unit - q_heads) * head_dim;
      float k1, k2;
      rotate_pair(at(k + base + i), at(k + base + i + half), c, s, k1, k2);
      if (fp8) {
        fp8_rows[unit - first][i] = k1;
        fp8_rows[unit - first][i + half] = k2;
      } else {
        kd[base + i] = __float2bfloat16_rn(k1);
        kd[base + i + half] = __float2bfloat16_rn(k2);
      }
    } else {
      if (!has_slot) continue;
      const int base = (unit - q_heads - cache.kv_heads) * head_dim;
      const float v1 = at(v + base + i), v2 = at(v + base + i + half);
      if (fp8) {
        fp8_rows[unit - first][i] = v1;
        fp8_rows[unit - first][i + half] = v2;
      } else {
        vd[base + i] = __float2bfloat16_rn(v1);
        vd[base + i + half] = __float2bfloat16_rn(v2);
      }
    }
  }
  if (!fp8 || !has_slot) return;

  // FP8: warp w quantizes the block's w-th unit if it is a K or V row.
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int unit = first + warp;
  if (unit >= last || unit < q_heads) return;
  const bool is_k = unit < q_heads + cache.kv_heads;
  const int kv_head = unit - q_heads - (is_k ? 0 : cache.kv_heads);
  const float* r = fp8_rows[warp];
  float amax = 0.0f;
  bool finite = true;
  for (int d = lane; d < head_dim; d += 32) {
    finite = finite && isfinite(r[d]);
    amax = fmaxf(amax, fabsf(r[d]));
  }
  finite = __all_sync(0xffffffffu, finite);
  for (int o = 16; o > 0; o /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const int e = finite ? kv_row_exponent(amax) : kKvPoisonedExponent;
  const size_t row_start = slot_row + static_cast<size_t>(kv_head) * head_dim;
  uint8_t* codes = (is_k ? cache.k8 : cache.v8) + row_start;
  for (int d = lane; d < head_dim; d += 32) codes[d] = finite ? kv_code(r[d], e) : 0;
  if (lane == 0) (is_k ? cache.k_exp : cache.v_exp)[row_start / head_dim] = static_cast<int8_t>(e);
}

}  // namespace

const RopeFrequencies& rope_frequencies(float theta, int head_dim) {
  MOXIN_CHECK(head_dim % 2 == 0 && head_dim > 0 && head_dim <= kMaxHeadDim, "[cuda] rope: head_dim ", head_dim,
              " (even, at most ", kMaxHeadDim, ")");
  MOXIN_CHECK(theta > 0.0f, "[cuda] rope: theta ", theta, " must be positive");
  thread_local float cached_theta = 0.0f;
  thread_local int cached_head_dim = 0;
  thread_local RopeFrequencies frequencies{};
  if (cached_theta != theta || cached_head_dim != head_dim) {
    for (int i = 0; i < head_dim / 2; ++i) frequencies.inv[i] = rope_inv_freq(theta, i, head_dim);
    cached_theta = theta;
    cached_head_dim = head_dim;
  }
  return frequencies;
}

void rope_kv_write(const float* qkv, const int32_t* positions, int q_heads, float theta, float* q,
                   const PagedLayer& cache, const TokenIndex& index, cudaStream_t stream, QkvScales scales) {
  if (index.tokens == 0) return;
  const RopeFrequencies& frequencies = rope_frequencies(theta, cache.head_dim);  // checks head_dim and theta
  const int units = q_heads + 2 * cache.kv_heads;
  const int most_blocks = (units + kHeadsPerBlock - 1) / kHeadsPerBlock;  // per token
  const int per_token = cache.k8 != nullptr ? most_blocks
                                            : std::clamp(kRopeBlocksPerSm * multiprocessors() / index.tokens, 1,
                                                         most_blocks);
  const int heads_per_block = (units + per_token - 1) / per_token;
  const dim3 grid(static_cast<unsigned>(index.tokens), static_cast<unsigned>((units + heads_per_block - 1) / heads_per_block));
  launch_kernel("rope_kv_write_kernel", rope_kv_write_kernel, grid, kRopeThreads, 0, stream, qkv, scales, positions,
                q_heads, frequencies, q, cache, index, heads_per_block);
}

}  // namespace moxin::cuda
