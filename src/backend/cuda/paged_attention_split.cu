// Decode attention over the paged cache (flash-decoding): grid (splits, kv heads, tokens).
// A block takes one token, one kv head and one slice of the token's context, and serves all
// query heads of that kv head's GQA group, so each K/V row is read once per token. Each warp
// walks every 4th position of the slice with 4 positions' K/V loads in flight; warps merge
// their online-softmax states in shared memory; with several splits a second kernel merges
// the slices. Positions beyond a token's own context are not read, so a graph captured with a
// large max_context serves any shorter one.
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/kernels.hpp"

namespace moxin::cuda {
namespace {

constexpr int kSplitWarps = 4;
constexpr int kMaxGroup = 8;  // query heads per kv head
constexpr int kPositionsInFlight = 4;
constexpr int kCombineThreads = 128;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float bf16_at(const bf16_bits* p, size_t i) {
  return __uint_as_float(static_cast<uint32_t>(p[i]) << 16);
}

// Context length of a token: pos + 1, or 0 when its index entries are invalid.
__device__ __forceinline__ int token_context(const TokenIndex& index, int capacity, int token) {
  const int seq = index.token_seq[token];
  const int pos = index.token_pos[token];
  return (seq >= 0 && seq < index.num_seqs && pos >= 0 && pos < capacity) ? pos + 1 : 0;
}

// DJ = ceil(head_dim / 32): lane holds dims lane + 32 j.
template <int DJ>
__global__ void __launch_bounds__(kSplitWarps * 32)
    paged_split_kernel(const float* __restrict__ q, PagedLayer cache, TokenIndex index,
                       int q_heads, int chunk, int splits, float scale,
                       float* __restrict__ partial, float* __restrict__ y) {
  __shared__ float sm_m[kSplitWarps][kMaxGroup];
  __shared__ float sm_l[kSplitWarps][kMaxGroup];
  __shared__ float sm_acc[kSplitWarps][kMaxGroup][kMaxHeadDim];

  const int split = blockIdx.x;
  const int kv_head = blockIdx.y;
  const int token = blockIdx.z;
  const int head_dim = cache.head_dim;
  const int group = q_heads / cache.kv_heads;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int context = token_context(index, index.max_blocks * cache.block_size, token);
  const int begin = split * chunk;
  // The last split runs to the token's own end, so an understated max_context is still right.
  const int end = split == splits - 1 ? context : min(begin + chunk, context);
  const int32_t* table =
      index.block_tables + static_cast<size_t>(max(index.token_seq[token], 0)) * index.max_blocks;

  float qr[kMaxGroup][DJ];
  float m[kMaxGroup], l[kMaxGroup], acc[kMaxGroup][DJ];
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int j = 0; j < DJ; ++j) {
      const int d = lane + 32 * j;
      qr[g][j] = (g < group && d < head_dim)
                     ? q[(static_cast<size_t>(token) * q_heads + kv_head * group + g) * head_dim + d]
                     : 0.0f;
      acc[g][j] = 0.0f;
    }
  }

  const size_t row_stride = static_cast<size_t>(cache.kv_heads) * head_dim;
  for (int p0 = begin + warp; p0 < end; p0 += kSplitWarps * kPositionsInFlight) {
    float kf[kPositionsInFlight][DJ], vf[kPositionsInFlight][DJ];
    bool ok[kPositionsInFlight];
#pragma unroll
    for (int pp = 0; pp < kPositionsInFlight; ++pp) {
      const int p = p0 + pp * kSplitWarps;
      const int block = p < end ? table[p / cache.block_size] : -1;
      ok[pp] = block >= 0 && block < cache.num_blocks;
      const size_t base = ok[pp] ? (static_cast<size_t>(block) * cache.block_size + p % cache.block_size) * row_stride +
                                       static_cast<size_t>(kv_head) * head_dim
                                 : 0;
#pragma unroll
      for (int j = 0; j < DJ; ++j) {
        const int d = lane + 32 * j;
        const bool load = ok[pp] && d < head_dim;
        kf[pp][j] = load ? bf16_at(cache.k, base + d) : 0.0f;
        vf[pp][j] = load ? bf16_at(cache.v, base + d) : 0.0f;
      }
    }
#pragma unroll
    for (int pp = 0; pp < kPositionsInFlight; ++pp) {
      if (!ok[pp]) continue;  // uniform across the warp
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g) {
        if (g >= group) break;
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < DJ; ++j) s = fmaf(qr[g][j], kf[pp][j], s);
        s = warp_sum(s) * scale;
        const float m_new = fmaxf(m[g], s);
        const float c = expf(m[g] - m_new);  // 0 while m[g] is -inf
        const float e = expf(s - m_new);
        l[g] = l[g] * c + e;
#pragma unroll
        for (int j = 0; j < DJ; ++j) acc[g][j] = fmaf(acc[g][j], c, e * vf[pp][j]);
        m[g] = m_new;
      }
    }
  }

#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    if (g >= group) break;
    if (lane == 0) {
      sm_m[warp][g] = m[g];
      sm_l[warp][g] = l[g];
    }
#pragma unroll
    for (int j = 0; j < DJ; ++j) {
      const int d = lane + 32 * j;
      if (d < head_dim) sm_acc[warp][g][d] = acc[g][j];
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < group * head_dim; e += kSplitWarps * 32) {
    const int g = e / head_dim;
    const int d = e % head_dim;
    float mx = -INFINITY;
    for (int w = 0; w < kSplitWarps; ++w) mx = fmaxf(mx, sm_m[w][g]);
    float sum = 0.0f, out = 0.0f;
    if (mx != -INFINITY) {
      for (int w = 0; w < kSplitWarps; ++w) {
        const float f = expf(sm_m[w][g] - mx);
        sum += sm_l[w][g] * f;
        out += sm_acc[w][g][d] * f;
      }
    }
    const size_t head_row = static_cast<size_t>(token) * q_heads + kv_head * group + g;
    if (splits == 1) {
      y[head_row * head_dim + d] = sum > 0.0f ? out / sum : __int_as_float(0x7fc00000);
    } else {
      float* part = partial + (head_row * splits + split) * (head_dim + 2);
      part[d] = out;
      if (d == 0) {
        part[head_dim] = mx;
        part[head_dim + 1] = sum;
      }
    }
  }
}

// Merges the splits of one (token, query head): grid (q_heads, tokens).
__global__ void __launch_bounds__(kCombineThreads)
    paged_combine_kernel(const float* __restrict__ partial, int splits, int head_dim,
                         float* __restrict__ y) {
  const size_t head_row = static_cast<size_t>(blockIdx.y) * gridDim.x + blockIdx.x;
  const float* base = partial + head_row * splits * (head_dim + 2);
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, base[s * (head_dim + 2) + head_dim]);
  for (int d = threadIdx.x; d < head_dim; d += kCombineThreads) {
    float sum = 0.0f, out = 0.0f;
    if (mx != -INFINITY) {
      for (int s = 0; s < splits; ++s) {
        const float* part = base + s * (head_dim + 2);
        const float f = expf(part[head_dim] - mx);
        sum += part[head_dim + 1] * f;
        out += part[d] * f;
      }
    }
    y[head_row * head_dim + d] = sum > 0.0f ? out / sum : __int_as_float(0x7fc00000);
  }
}

}  // namespace

void paged_attention_split(const float* q, const PagedLayer& cache, const TokenIndex& index,
                           int q_heads, int max_context, int splits, float* partial, float* y,
                           cudaStream_t stream) {
  if (index.tokens == 0) return;
  const int chunk = (max_context + splits - 1) / splits;
  const float scale = 1.0f / sqrtf(static_cast<float>(cache.head_dim));
  const dim3 grid(splits, cache.kv_heads, index.tokens);
  switch ((cache.head_dim + 31) / 32) {
#define MOXIN_SPLIT_CASE(DJ)                                                                    \
  case DJ:                                                                                     \
    paged_split_kernel<DJ><<<grid, kSplitWarps * 32, 0, stream>>>(q, cache, index, q_heads,   \
                                                                  chunk, splits, scale,       \
                                                                  partial, y);                \
    break;
    MOXIN_SPLIT_CASE(1)
    MOXIN_SPLIT_CASE(2)
    MOXIN_SPLIT_CASE(3)
    MOXIN_SPLIT_CASE(4)
#undef MOXIN_SPLIT_CASE
    default: fail("[cuda] paged_attention: head_dim ", cache.head_dim, " > ", kMaxHeadDim);
  }
  MOXIN_CUDA_CHECK_LAUNCH("paged_split_kernel");
  if (splits > 1) {
    paged_combine_kernel<<<dim3(q_heads, index.tokens), kCombineThreads, 0, stream>>>(
        partial, splits, cache.head_dim, y);
    MOXIN_CUDA_CHECK_LAUNCH("paged_combine_kernel");
  }
}

}  // namespace moxin::cuda
