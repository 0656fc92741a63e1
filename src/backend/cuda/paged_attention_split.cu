// Decode attention over the paged cache (flash-decoding): grid (splits, kv heads, tokens).
// A block takes one token, one kv head and one slice of the token's context, and serves all
// query heads of that kv head's GQA group, so each K/V row is read once per token. Warps take
// 32-position tiles of the slice (one position per lane for the scores, lanes over dims for
// P V) and merge their online-softmax states in shared memory; with several splits a second
// kernel merges the slices. Positions beyond a token's own context are not read, so a graph
// captured with a large max_context serves any shorter one.
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/kernels.hpp"

namespace moxin::cuda {
namespace {

constexpr int kSplitWarps = 4;
constexpr int kMaxGroup = 8;  // query heads per kv head
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

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// kDpl = head_dim / 32 when that is 1..4 (compile-time head_dim: the K row is fetched with
// 16-byte loads, all in flight at once, and each lane owns kDpl consecutive output dims);
// kDpl = 0 serves any head_dim <= 128 (2-byte loads, lane owns dims lane + 32 j).
//
// A warp takes 32 positions at a time, one per lane: the lane computes the scores of its
// position for all heads of the group (q in shared memory, read as broadcasts), the warp
// updates the online softmax once per 32 positions, then accumulates P V with the
// probabilities broadcast by shuffles and V rows read coalesced across lanes.
template <int kDpl>
__global__ void __launch_bounds__(kSplitWarps * 32)
    paged_split_kernel(const float* __restrict__ q, PagedLayer cache, TokenIndex index,
                       int q_heads, int chunk, int splits, float scale,
                       float* __restrict__ partial, float* __restrict__ y) {
  constexpr int kAcc = kDpl > 0 ? kDpl : kMaxHeadDim / 32;
  __shared__ __align__(16) float sm_q[kMaxGroup][kMaxHeadDim];
  __shared__ float sm_m[kSplitWarps][kMaxGroup];
  __shared__ float sm_l[kSplitWarps][kMaxGroup];
  __shared__ float sm_acc[kSplitWarps][kMaxGroup][kMaxHeadDim];

  const int split = blockIdx.x;
  const int kv_head = blockIdx.y;
  const int token = blockIdx.z;
  const int head_dim = kDpl > 0 ? 32 * kDpl : cache.head_dim;
  const int group = q_heads / cache.kv_heads;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int context = token_context(index, index.max_blocks * cache.block_size, token);
  const int begin = split * chunk;
  // The last split runs to the token's own end, so an understated max_context is still right.
  const int end = split == splits - 1 ? context : min(begin + chunk, context);
  const int32_t* table =
      index.block_tables + static_cast<size_t>(max(index.token_seq[token], 0)) * index.max_blocks;

  const float* q_group = q + (static_cast<size_t>(token) * q_heads + kv_head * group) * head_dim;
  for (int e = threadIdx.x; e < group * head_dim; e += kSplitWarps * 32)
    sm_q[e / head_dim][e % head_dim] = q_group[e];
  __syncthreads();

  float m[kMaxGroup], l[kMaxGroup], acc[kMaxGroup][kAcc];
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;  // this lane's share; summed over the warp at the end
#pragma unroll
    for (int a = 0; a < kAcc; ++a) acc[g][a] = 0.0f;
  }

  const size_t row_stride = static_cast<size_t>(cache.kv_heads) * head_dim;
  for (int tile0 = begin + warp * 32; tile0 < end; tile0 += kSplitWarps * 32) {
    const int p = tile0 + lane;
    const int block = p < end ? table[p / cache.block_size] : -1;
    const bool ok = block >= 0 && block < cache.num_blocks;
    const long long offset = ok ? static_cast<long long>((static_cast<size_t>(block) * cache.block_size +
                                                           p % cache.block_size) * row_stride +
                                                          static_cast<size_t>(kv_head) * head_dim)
                                : -1;
    float s[kMaxGroup];
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) s[g] = 0.0f;
    if (ok) {
      if constexpr (kDpl > 0) {
        constexpr int kVecs = 32 * kDpl / 8;
        const uint4* krow = reinterpret_cast<const uint4*>(cache.k + offset);
        uint4 kv[kVecs];
#pragma unroll
        for (int i = 0; i < kVecs; ++i) kv[i] = __ldg(krow + i);
#pragma unroll
        for (int i = 0; i < kVecs; ++i) {
          const uint32_t w[4] = {kv[i].x, kv[i].y, kv[i].z, kv[i].w};
#pragma unroll
          for (int g = 0; g < kMaxGroup; ++g) {
            if (g >= group) break;
            const float4 qa = *reinterpret_cast<const float4*>(&sm_q[g][8 * i]);
            const float4 qb = *reinterpret_cast<const float4*>(&sm_q[g][8 * i + 4]);
            float t = s[g];
            t = fmaf(qa.x, __uint_as_float(w[0] << 16), t);
            t = fmaf(qa.y, __uint_as_float(w[0] & 0xffff0000u), t);
            t = fmaf(qa.z, __uint_as_float(w[1] << 16), t);
            t = fmaf(qa.w, __uint_as_float(w[1] & 0xffff0000u), t);
            t = fmaf(qb.x, __uint_as_float(w[2] << 16), t);
            t = fmaf(qb.y, __uint_as_float(w[2] & 0xffff0000u), t);
            t = fmaf(qb.z, __uint_as_float(w[3] << 16), t);
            t = fmaf(qb.w, __uint_as_float(w[3] & 0xffff0000u), t);
            s[g] = t;
          }
        }
      } else {
        for (int d = 0; d < head_dim; ++d) {
          const float kf = bf16_at(cache.k, offset + d);
#pragma unroll
          for (int g = 0; g < kMaxGroup; ++g)
            if (g < group) s[g] = fmaf(sm_q[g][d], kf, s[g]);
        }
      }
    }

    // Online softmax over this tile's 32 positions, per head of the group.
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
      if (g >= group) break;
      const float sg = ok ? s[g] * scale : -INFINITY;
      const float m_new = fmaxf(m[g], warp_max(sg));
      const float base = m_new == -INFINITY ? 0.0f : m_new;
      const float corr = expf(m[g] - base);  // 0 while m[g] is -inf
      s[g] = expf(sg - base);               // 0 for positions outside the context
      l[g] = l[g] * corr + s[g];
#pragma unroll
      for (int a = 0; a < kAcc; ++a) acc[g][a] *= corr;
      m[g] = m_new;
    }

    // P V: 8 positions' V rows in flight at a time.
    const int count = min(32, end - tile0);
    for (int j0 = 0; j0 < count; j0 += 8) {
      float v[8][kAcc];
#pragma unroll
      for (int jj = 0; jj < 8; ++jj) {
        const long long off = __shfl_sync(0xffffffffu, offset, j0 + jj);
        if constexpr (kDpl == 4) {
          const uint2 raw = off >= 0 ? __ldg(reinterpret_cast<const uint2*>(cache.v + off) + lane) : make_uint2(0, 0);
          v[jj][0] = __uint_as_float(raw.x << 16);
          v[jj][1] = __uint_as_float(raw.x & 0xffff0000u);
          v[jj][2] = __uint_as_float(raw.y << 16);
          v[jj][3] = __uint_as_float(raw.y & 0xffff0000u);
        } else if constexpr (kDpl == 2) {
          const uint32_t raw = off >= 0 ? __ldg(reinterpret_cast<const uint32_t*>(cache.v + off) + lane) : 0u;
          v[jj][0] = __uint_as_float(raw << 16);
          v[jj][1] = __uint_as_float(raw & 0xffff0000u);
        } else {
#pragma unroll
          for (int a = 0; a < kAcc; ++a) {
            const int d = kDpl > 0 ? lane * kDpl + a : lane + 32 * a;
            v[jj][a] = (off >= 0 && d < head_dim) ? bf16_at(cache.v, off + d) : 0.0f;
          }
        }
      }
#pragma unroll
      for (int jj = 0; jj < 8; ++jj) {
#pragma unroll
        for (int g = 0; g < kMaxGroup; ++g) {
          if (g >= group) break;
          const float pj = __shfl_sync(0xffffffffu, s[g], j0 + jj);
#pragma unroll
          for (int a = 0; a < kAcc; ++a) acc[g][a] = fmaf(pj, v[jj][a], acc[g][a]);
        }
      }
    }
  }

#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    if (g >= group) break;
    const float lsum = warp_sum(l[g]);
    if (lane == 0) {
      sm_m[warp][g] = m[g];
      sm_l[warp][g] = lsum;
    }
#pragma unroll
    for (int a = 0; a < kAcc; ++a) {
      const int d = kDpl > 0 ? lane * kDpl + a : lane + 32 * a;
      if (d < head_dim) sm_acc[warp][g][d] = acc[g][a];
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
  const int dims_per_lane = cache.head_dim % 32 == 0 ? cache.head_dim / 32 : 0;
  switch (dims_per_lane) {
#define MOXIN_SPLIT_CASE(DPL)                                                                  \
  case DPL:                                                                                   \
    paged_split_kernel<DPL><<<grid, kSplitWarps * 32, 0, stream>>>(q, cache, index, q_heads,   \
                                                                  chunk, splits, scale,       \
                                                                  partial, y);                \
    break;
    MOXIN_SPLIT_CASE(1)
    MOXIN_SPLIT_CASE(2)
    MOXIN_SPLIT_CASE(3)
    MOXIN_SPLIT_CASE(4)
#undef MOXIN_SPLIT_CASE
    default:
      paged_split_kernel<0><<<grid, kSplitWarps * 32, 0, stream>>>(q, cache, index, q_heads, chunk,
                                                                   splits, scale, partial, y);
  }
  MOXIN_CUDA_CHECK_LAUNCH("paged_split_kernel");
  if (splits > 1) {
    paged_combine_kernel<<<dim3(q_heads, index.tokens), kCombineThreads, 0, stream>>>(
        partial, splits, cache.head_dim, y);
    MOXIN_CUDA_CHECK_LAUNCH("paged_combine_kernel");
  }
}

}  // namespace moxin::cuda
