// The pieces the split-K decode attention kernels share (paged_attention_split.cu,
// paged_attention_mma.cu): a token's context and the block's end that merges
// the warps' online-softmax states and then the splits of a (token, kv head), through global
// memory (last block to finish) or inside a thread block cluster.
#pragma once

#include <cooperative_groups.h>

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "backend/cuda/cp_async.cuh"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/warp_reduce.cuh"

namespace moxin::cuda::split_k {

// Warps per split-K block. Eight (one block an SM at batch 8 and 1k context) measured against
// four on an H100 (session 28): batch 1 4% slower, batch 8 0.5% faster, batch 16-32 1-2% slower.
constexpr int kSplitWarps = 4;
constexpr int kMaxGroup = 8;  // query heads per kv head
constexpr int kMaxSplits = 64;

// Context length of a token: pos + 1, or 0 when its index entries are invalid.
__device__ __forceinline__ int token_context(const TokenIndex& index, int capacity, int token) {
  const int seq = index.token_seq[token];
  const int pos = index.token_pos[token];
  return (seq >= 0 && seq < index.num_seqs && pos >= 0 && pos < capacity) ? pos + 1 : 0;
}

// Positions [begin, end) of a token's context that split `split` of `splits` walks: the context
// dealt to at most ceil(context / kMinPositionsPerSplit) splits (the host's rule for an eager
// launch, cuda_backend.cpp), so that a decode graph captured for its context bucket (16 splits at
// batch 1 for 2048) runs a 1k context on 8 (7.4 us on the H200 against ~9 at 16, session 14).
// Splits past those are empty (end <= begin) and merge as neutral partials.
struct SplitRange {
  int begin, end;
};
__device__ __forceinline__ SplitRange split_range(int context, int split, int splits) {
  const int used = min(splits, max(1, (context + kMinPositionsPerSplit - 1) / kMinPositionsPerSplit));
  const int chunk = (context + used - 1) / used;
  const int begin = split * chunk;
  return {begin, min(begin + chunk, context)};
}

// Shared state of a block's merge: each warp's softmax state, then the splits' weights.
struct BlockMerge {
  float m[kSplitWarps][kMaxGroup];
  float l[kSplitWarps][kMaxGroup];
  float weight[kMaxGroup][kMaxSplits];
  bool merge_here;
  float block_m[kMaxGroup];  // the block's state after its warps' merge (cluster merge)
  float block_l[kMaxGroup];
};

// Output (g, d) of the block's warps combined: their common max, the summed softmax weight and
// the weighted unnormalized output (-inf, 0, 0 when no warp saw a position).
struct WarpsMerged {
  float mx, sum, out;
};
__device__ __forceinline__ WarpsMerged merge_warps(const BlockMerge& sm,
                                                   const float (*acc)[kMaxGroup][kMaxHeadDim],
                                                   int g, int d) {
  WarpsMerged r{-INFINITY, 0.0f, 0.0f};
  for (int w = 0; w < kSplitWarps; ++w) r.mx = fmaxf(r.mx, sm.m[w][g]);
  if (r.mx != -INFINITY) {
    for (int w = 0; w < kSplitWarps; ++w) {
      const float f = expf(sm.m[w][g] - r.mx);
      r.sum += sm.l[w][g] * f;
      r.out += acc[w][g][d] * f;
    }
  }
  return r;
}

// The block's end, shared by both decode kernels: every warp has left its (m, l) in `sm` and
// its unnormalized output in `acc`. Merges the warps; with one split writes y, else leaves a
// partial result and the last block of a (token, kv head) to finish merges the splits.
__device__ __forceinline__ void merge_block(BlockMerge& sm,
                                            const float (*acc)[kMaxGroup][kMaxHeadDim], int token,
                                            int kv_head, int kv_heads, int split, int splits,
                                            int q_heads, int group, int head_dim,
                                            float* __restrict__ partial, int* __restrict__ counters,
                                            float* __restrict__ y) {
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  __syncthreads();  // the warps' states are in shared memory
  const size_t first_head = static_cast<size_t>(token) * q_heads + kv_head * group;
  for (int e = threadIdx.x; e < group * head_dim; e += kSplitWarps * 32) {
    const int g = e / head_dim;
    const int d = e % head_dim;
    const auto [mx, sum, out] = merge_warps(sm, acc, g, d);
    if (splits == 1) {
      y[(first_head + g) * head_dim + d] = sum > 0.0f ? out / sum : __int_as_float(0x7fc00000);
    } else {
      float* part = partial + ((first_head + g) * splits + split) * (head_dim + 2);
      part[d] = out;
      if (d == 0) {
        part[head_dim] = mx;
        part[head_dim + 1] = sum;
      }
    }
  }
  if (splits == 1) return;

  // The last block of this (token, kv head) merges the splits.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    int* counter = counters + static_cast<size_t>(token) * kv_heads + kv_head;
    sm.merge_here = atomicAdd(counter, 1) == splits - 1;
    if (sm.merge_here) *counter = 0;  // ready for the next call
  }
  __syncthreads();
  if (!sm.merge_here) return;
  __threadfence();
  // Weights of the splits per head (warp per head, lanes over splits), then the weighted sum
  // with every split's load independent (no serial chain of L2 round trips).
  for (int g = warp; g < group; g += kSplitWarps) {
    const float* parts = partial + (first_head + g) * splits * (head_dim + 2);
    float mv[kMaxSplits / 32], lv[kMaxSplits / 32];
    float mx = -INFINITY;
#pragma unroll
    for (int r = 0; r < kMaxSplits / 32; ++r) {
      const int sp = lane + 32 * r;
      mv[r] = sp < splits ? __ldcg(parts + sp * (head_dim + 2) + head_dim) : -INFINITY;
      lv[r] = sp < splits ? __ldcg(parts + sp * (head_dim + 2) + head_dim + 1) : 0.0f;
      mx = fmaxf(mx, mv[r]);
    }
    mx = warp_max(mx);
    float f[kMaxSplits / 32], sum = 0.0f;
#pragma unroll
    for (int r = 0; r < kMaxSplits / 32; ++r) {
      f[r] = mx == -INFINITY ? 0.0f : expf(mv[r] - mx);
      sum += lv[r] * f[r];
    }
    sum = warp_sum(sum);
    const float inv = sum > 0.0f ? 1.0f / sum : __int_as_float(0x7fc00000);
#pragma unroll
    for (int r = 0; r < kMaxSplits / 32; ++r)
      if (lane + 32 * r < splits) sm.weight[g][lane + 32 * r] = f[r] * inv;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < group * head_dim; e += kSplitWarps * 32) {
    const int g = e / head_dim;
    const int d = e % head_dim;
    const float* parts = partial + (first_head + g) * splits * (head_dim + 2) + d;
    float out = 0.0f;
#pragma unroll 8
    for (int sp = 0; sp < splits; ++sp)
      out = fmaf(sm.weight[g][sp], __ldcg(parts + sp * (head_dim + 2)), out);
    y[(first_head + g) * head_dim + d] = out;
  }
}

// The block's end when the splits of a (token, kv head) form one thread block cluster: each
// block merges its warps into its own shared memory, then after a cluster barrier every block
// merges a slice of the outputs over all blocks' shared memory (no partials in global memory,
// no fence or counter); the second barrier keeps each block's shared memory until it is read.
__device__ __forceinline__ void merge_cluster(BlockMerge& sm, float (*acc)[kMaxGroup][kMaxHeadDim],
                                              int token, int kv_head, int q_heads, int group,
                                              int head_dim, float* __restrict__ y) {
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  __syncthreads();  // the warps' states are in shared memory
  for (int e = threadIdx.x; e < group * head_dim; e += kSplitWarps * 32) {
    const int g = e / head_dim;
    const int d = e % head_dim;
    const auto [mx, sum, out] = merge_warps(sm, acc, g, d);
    acc[0][g][d] = out;  // only this thread reads or writes (g, d)
    if (d == 0) {
      sm.block_m[g] = mx;
      sm.block_l[g] = sum;
    }
  }
  cluster.sync();
  const int blocks = static_cast<int>(cluster.num_blocks());
  const size_t first_head = static_cast<size_t>(token) * q_heads + kv_head * group;
  for (int e = static_cast<int>(cluster.block_rank()) * kSplitWarps * 32 + threadIdx.x;
       e < group * head_dim; e += blocks * kSplitWarps * 32) {
    const int g = e / head_dim;
    const int d = e % head_dim;
    float mx = -INFINITY;
    for (int b = 0; b < blocks; ++b) mx = fmaxf(mx, cluster.map_shared_rank(&sm, b)->block_m[g]);
    float sum = 0.0f, out = 0.0f;
    if (mx != -INFINITY) {
      for (int b = 0; b < blocks; ++b) {
        const BlockMerge* other = cluster.map_shared_rank(&sm, b);
        const float f = expf(other->block_m[g] - mx);
        sum += other->block_l[g] * f;
        out += *cluster.map_shared_rank(&acc[0][g][d], b) * f;
      }
    }
    y[(first_head + g) * head_dim + d] = sum > 0.0f ? out / sum : __int_as_float(0x7fc00000);
  }
  cluster.sync();
}

// Host side: launches a split-K decode kernel over grid (splits, kv heads, tokens), the splits of a
// (token, kv head) as one thread block cluster where `cluster`, with PDL where `prefetching` (a
// kernel that reads the cache before wait_for_prior_kernels(), launch.cuh); `extra` follows the
// common parameters (the fused RoPE's input).
template <class Kernel, class... Extra>
void launch_split_k(const char* name, Kernel kernel, size_t smem, bool cluster, bool prefetching, const float* q,
                    const PagedLayer& cache, const TokenIndex& index, int q_heads, int splits,
                    float* partial, int* counters, float* y, cudaStream_t stream, const Extra&... extra) {
  const float scale = 1.0f / sqrtf(static_cast<float>(cache.head_dim));
  const dim3 grid(splits, cache.kv_heads, index.tokens);
  launch_kernel_with(name, kernel, grid, kSplitWarps * 32, smem, stream, cluster ? static_cast<unsigned>(splits) : 1u,
                     prefetching, q, cache, index, q_heads, splits, scale, partial, counters, y, extra...);
}

// Host side: the most splits of a (token, kv head) that one thread block cluster may hold for
// `kernel` launched with `smem` bytes of dynamic shared memory: 16 where the device co-schedules
// such clusters (a non-portable size; the kernel must allow it), else the portable 8.
template <class Kernel>
int largest_cluster_splits(Kernel kernel, size_t smem) {
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(16, 1, 1);
  config.blockDim = dim3(kSplitWarps * 32);
  config.dynamicSmemBytes = smem;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = 16;
  attribute.val.clusterDim.y = 1;
  attribute.val.clusterDim.z = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  int active_clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&active_clusters, kernel, &config) != cudaSuccess) {
    (void)cudaGetLastError();  // not fatal: the portable size stays
    return 8;
  }
  return active_clusters > 0 ? 16 : 8;
}

}  // namespace moxin::cuda::split_k
