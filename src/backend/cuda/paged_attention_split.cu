// Decode attention over the paged cache (flash-decoding): grid (splits, kv heads, tokens).
// A block takes one token, one kv head and one slice of the token's context, and serves all
// query heads of that kv head's GQA group, so each K/V row is read once per token.
//
// Warps take 32-position tiles of the slice: the warp stages the tile's K and V rows in shared
// memory with coalesced cp.async (block ids fetched a tile ahead), then each lane computes the
// scores of its position for all heads of the group (q in shared memory, read as broadcasts), the
// warp updates the online softmax once per tile, then accumulates P V from shared memory with lanes
// over dims. Warps merge their states in shared memory; with several splits each block leaves
// a partial result and the last block of a (token, kv head) to finish merges them (an atomic
// counter that the merging block resets, so graph replays need no memset), the splits' weights
// computed once per head and the weighted sums issued as independent loads.
// Positions beyond a token's own context are not read, so a graph captured with a large
// max_context serves any shorter one.
// paged_warp_kernel (below, Auto's choice where it fits) walks in registers instead, without
// block barriers, and can merge the splits inside a thread block cluster.
#include <algorithm>
#include <type_traits>

#include "backend/cuda/bf16_dot.cuh"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/fp8_kv.cuh"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/paged_attention_merge.cuh"
#include "backend/cuda/warp_reduce.cuh"

namespace moxin::cuda {
namespace {

using namespace split_k;

constexpr int kTile = 32;  // positions per warp step: one per lane

// K and V tiles of every warp (padded rows), at least the warps' merge states.
size_t split_smem_bytes(int head_dim) {
  const int d = head_dim % 32 == 0 ? head_dim : kMaxHeadDim;
  const size_t tiles = size_t{2} * kSplitWarps * kTile * (d + 8) * 2;
  return std::max(tiles, size_t{kSplitWarps} * kMaxGroup * kMaxHeadDim * sizeof(float));
}

// kDpl = head_dim / 32 when that is 1..4: compile-time head_dim, K and V tiles staged in
// shared memory by coalesced cp.async (16 lanes per 256-byte row), lane owns kDpl consecutive
// output dims. kDpl = 0 serves any head_dim <= 128 and the FP8 cache with loads straight from
// memory (lane owns dims lane + 32 j): tiny test models, and FP8 shapes the tensor-core kernel
// does not take.
template <int kDpl>
__global__ void __launch_bounds__(kSplitWarps * 32)
    paged_split_kernel(const float* __restrict__ q, PagedLayer cache, TokenIndex index, int q_heads,
                       int splits, float scale, float* __restrict__ partial,
                       int* __restrict__ counters, float* __restrict__ y) {
  constexpr int kAcc = kDpl > 0 ? kDpl : kMaxHeadDim / 32;
  constexpr int kD = kDpl > 0 ? 32 * kDpl : kMaxHeadDim;
  constexpr int kRow = kD + 8;     // staged row stride (bf16): 16-byte rows land in distinct banks
  constexpr int kChunks = kD / 8;  // 16-byte chunks per row
  // Dynamic: the K and V tiles of every warp during the walk, the warps' states after it.
  extern __shared__ __align__(16) unsigned char staging[];
  __shared__ __align__(16) float sm_q[kMaxGroup][kMaxHeadDim];
  __shared__ long long sm_offset[kSplitWarps][kTile];
  __shared__ BlockMerge merge;
  auto* sm_acc = reinterpret_cast<float(*)[kMaxGroup][kMaxHeadDim]>(staging);

  wait_for_prior_kernels();
  const int split = blockIdx.x;
  const int kv_head = blockIdx.y;
  const int token = blockIdx.z;
  const int head_dim = kDpl > 0 ? kD : cache.head_dim;
  const int group = q_heads / cache.kv_heads;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  auto* k_tile = reinterpret_cast<uint16_t*>(staging) + warp * kTile * kRow;
  auto* v_tile = reinterpret_cast<uint16_t*>(staging) + (kSplitWarps + warp) * kTile * kRow;
  const int context = token_context(index, index.max_blocks * cache.block_size, token);
  // Each token's own context is dealt to the splits: a graph captured for a longer context
  // (its split count) spends nothing on positions the token does not have.
  const auto [begin, end] = split_range(context, split, splits);
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
  constexpr int kStep = kSplitWarps * kTile;
  // Block ids one tile ahead, so that a tile waits for one memory round trip (its K/V).
  int next_block = begin + warp * kTile + lane < end
                       ? table[(begin + warp * kTile + lane) / cache.block_size]
                       : -1;
  for (int tile0 = begin + warp * kTile; tile0 < end; tile0 += kStep) {
    const int p = tile0 + lane;
    const int block = next_block;
    next_block = p + kStep < end ? table[(p + kStep) / cache.block_size] : -1;
    const bool ok = p < end && block >= 0 && block < cache.num_blocks;
    const long long offset =
        ok ? static_cast<long long>(
                 (static_cast<size_t>(block) * cache.block_size + p % cache.block_size) *
                     row_stride +
                 static_cast<size_t>(kv_head) * head_dim)
           : -1;
    float s[kMaxGroup];
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) s[g] = 0.0f;
    if constexpr (kDpl > 0) {
      sm_offset[warp][lane] = offset;
      __syncwarp();
#pragma unroll
      for (int i = 0; i < kChunks; ++i) {
        const int c = lane + 32 * i;
        const int row = c / kChunks;
        const int col = (c % kChunks) * 8;
        const long long off = sm_offset[warp][row];
        uint16_t* kd = k_tile + row * kRow + col;
        uint16_t* vd = v_tile + row * kRow + col;
        if (off >= 0) {
          copy16_async(kd, cache.k + off + col);
          copy16_async(vd, cache.v + off + col);
        } else {
          *reinterpret_cast<uint4*>(kd) = make_uint4(0, 0, 0, 0);
          *reinterpret_cast<uint4*>(vd) = make_uint4(0, 0, 0, 0);
        }
      }
      copies_issued();
      wait_staged<0>();
      __syncwarp();
      if (ok) {
        const uint4* krow = reinterpret_cast<const uint4*>(k_tile + lane * kRow);
#pragma unroll
        for (int i = 0; i < kChunks; ++i) {
          const uint4 kv = krow[i];
          const uint32_t w[4] = {kv.x, kv.y, kv.z, kv.w};
#pragma unroll
          for (int g = 0; g < kMaxGroup; ++g) {
            if (g >= group) break;
            const float4 qa = *reinterpret_cast<const float4*>(&sm_q[g][8 * i]);
            const float4 qb = *reinterpret_cast<const float4*>(&sm_q[g][8 * i + 4]);
            float t = s[g];
            t = fmaf(qa.x, bf16_low(w[0]), t);
            t = fmaf(qa.y, bf16_high(w[0]), t);
            t = fmaf(qa.z, bf16_low(w[1]), t);
            t = fmaf(qa.w, bf16_high(w[1]), t);
            t = fmaf(qb.x, bf16_low(w[2]), t);
            t = fmaf(qb.y, bf16_high(w[2]), t);
            t = fmaf(qb.z, bf16_low(w[3]), t);
            t = fmaf(qb.w, bf16_high(w[3]), t);
            s[g] = t;
          }
        }
      }
    } else if (ok) {
      for (int d = 0; d < head_dim; ++d) {
        const float kf = k_element(cache, offset + d);
#pragma unroll
        for (int g = 0; g < kMaxGroup; ++g)
          if (g < group) s[g] = fmaf(sm_q[g][d], kf, s[g]);
      }
    }

    // Online softmax over this tile's positions, per head of the group.
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
      if (g >= group) break;
      const float sg = ok ? s[g] * scale : -INFINITY;
      const float m_new = fmaxf(m[g], warp_max(sg));
      const float base = m_new == -INFINITY ? 0.0f : m_new;
      const float corr = expf(m[g] - base);  // 0 while m[g] is -inf
      s[g] = expf(sg - base);                // 0 for positions outside the context
      l[g] = l[g] * corr + s[g];
#pragma unroll
      for (int a = 0; a < kAcc; ++a) acc[g][a] *= corr;
      m[g] = m_new;
    }

    const int count = min(kTile, end - tile0);
    for (int j = 0; j < count; ++j) {
      float v[kAcc];
      if constexpr (kDpl > 0) {
        const uint16_t* vr = v_tile + j * kRow + lane * kDpl;
        if constexpr (kDpl == 4) {
          const uint2 raw = *reinterpret_cast<const uint2*>(vr);
          v[0] = bf16_low(raw.x);
          v[1] = bf16_high(raw.x);
          v[2] = bf16_low(raw.y);
          v[3] = bf16_high(raw.y);
        } else {
#pragma unroll
          for (int a = 0; a < kAcc; ++a) v[a] = __uint_as_float(static_cast<uint32_t>(vr[a]) << 16);
        }
      } else {
        const long long off = __shfl_sync(0xffffffffu, offset, j);
#pragma unroll
        for (int a = 0; a < kAcc; ++a) {
          const int d = lane + 32 * a;
          v[a] = (off >= 0 && d < head_dim) ? v_element(cache, off + d) : 0.0f;
        }
      }
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g) {
        if (g >= group) break;
        const float pj = __shfl_sync(0xffffffffu, s[g], j);
#pragma unroll
        for (int a = 0; a < kAcc; ++a) acc[g][a] = fmaf(pj, v[a], acc[g][a]);
      }
    }
    __syncwarp();  // the tile's staged rows are read before the next tile's copies land
  }

  __syncthreads();  // every warp is done with its staging: reuse it for the merge
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    if (g >= group) break;
    const float lsum = warp_sum(l[g]);
    if (lane == 0) {
      merge.m[warp][g] = m[g];
      merge.l[warp][g] = lsum;
    }
#pragma unroll
    for (int a = 0; a < kAcc; ++a) {
      const int d = kDpl > 0 ? lane * kDpl + a : lane + 32 * a;
      if (d < head_dim) sm_acc[warp][g][d] = acc[g][a];
    }
  }
  merge_block(merge, sm_acc, token, kv_head, cache.kv_heads, split, splits, q_heads, group,
              head_dim, partial, counters, y);
}

// Few tokens (batch-1 decode): the same splits and merge, but no block barrier in the walk. A
// warp takes kWarpChunk consecutive positions at a time and holds their K and V rows in
// registers (kD / 8 lanes per row, 16 bytes each, all loads of a chunk issued at once); the
// scores are summed over a row's lanes by shuffles, the online softmax and P V run on registers,
// and the row groups' sums meet by shuffles at the end. The chain per warp: token index ->
// block table -> K/V -> compute -> block merge.
constexpr int kWarpChunk = 16;

// kCluster: the grid's splits form one thread block cluster per (token, kv head), merged by
// merge_cluster; otherwise by merge_block.
template <int kD, int kGroup, bool kCluster>
__global__ void __launch_bounds__(kSplitWarps * 32)
    paged_warp_kernel(const float* __restrict__ q, PagedLayer cache, TokenIndex index, int q_heads,
                      int splits, float scale, float* __restrict__ partial,
                      int* __restrict__ counters, float* __restrict__ y) {
  constexpr int kLanesPerRow = kD / 8;              // 16-byte slices of a row
  constexpr int kRowsPerPass = 32 / kLanesPerRow;   // rows the warp covers per load
  constexpr int kRows = kWarpChunk / kRowsPerPass;  // rows per lane per chunk
  __shared__ __align__(16) float sm_acc[kSplitWarps][kMaxGroup][kMaxHeadDim];
  __shared__ BlockMerge merge;

  wait_for_prior_kernels();
  const int split = blockIdx.x;
  const int kv_head = blockIdx.y;
  const int token = blockIdx.z;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int col = (lane % kLanesPerRow) * 8;  // this lane's 8 dims
  const int sub = lane / kLanesPerRow;        // this lane's first row in a chunk
  const int context = token_context(index, index.max_blocks * cache.block_size, token);
  // Each token's own context is dealt to the splits: a graph captured for a longer context
  // (its split count) spends nothing on positions the token does not have.
  const auto [begin, end] = split_range(context, split, splits);
  const int32_t* table =
      index.block_tables + static_cast<size_t>(max(index.token_seq[token], 0)) * index.max_blocks;

  float qv[kGroup][8];
  const float* q_lane = q + (static_cast<size_t>(token) * q_heads + kv_head * kGroup) * kD + col;
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(q_lane + g * kD));
    const float4 b = __ldg(reinterpret_cast<const float4*>(q_lane + g * kD + 4));
    const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
    for (int j = 0; j < 8; ++j) qv[g][j] = v[j];
  }

  // l: this lane's rows only (the row's lanes hold copies); summed over row groups at the end.
  float m[kGroup], l[kGroup], acc[kGroup][8];
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[g][j] = 0.0f;
  }

  const size_t row_stride = static_cast<size_t>(cache.kv_heads) * kD;
  for (int chunk0 = begin + warp * kWarpChunk; chunk0 < end; chunk0 += kSplitWarps * kWarpChunk) {
    uint4 kr[kRows], vr[kRows];
    bool ok[kRows];
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int p = chunk0 + sub + kRowsPerPass * i;
      const int block = p < end ? table[p / cache.block_size] : -1;
      ok[i] = block >= 0 && block < cache.num_blocks;
      const size_t offset =
          (static_cast<size_t>(ok[i] ? block : 0) * cache.block_size + p % cache.block_size) *
              row_stride +
          static_cast<size_t>(kv_head) * kD + col;
      kr[i] =
          ok[i] ? __ldg(reinterpret_cast<const uint4*>(cache.k + offset)) : make_uint4(0, 0, 0, 0);
      vr[i] =
          ok[i] ? __ldg(reinterpret_cast<const uint4*>(cache.v + offset)) : make_uint4(0, 0, 0, 0);
    }

    float s[kRows][kGroup];
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const uint32_t w[4] = {kr[i].x, kr[i].y, kr[i].z, kr[i].w};
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        float t = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          t = fmaf(qv[g][2 * j], bf16_low(w[j]), t);
          t = fmaf(qv[g][2 * j + 1], bf16_high(w[j]), t);
        }
#pragma unroll
        for (int o = kLanesPerRow / 2; o > 0; o /= 2) t += __shfl_xor_sync(0xffffffffu, t, o);
        s[i][g] = ok[i] ? t * scale : -INFINITY;
      }
    }

    // Online softmax over the chunk, per head: the max over this lane's rows, then over the
    // row groups (lanes kLanesPerRow apart).
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      float mx = s[0][g];
#pragma unroll
      for (int i = 1; i < kRows; ++i) mx = fmaxf(mx, s[i][g]);
#pragma unroll
      for (int o = kLanesPerRow; o < 32; o *= 2)
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_new = fmaxf(m[g], mx);
      const float base = m_new == -INFINITY ? 0.0f : m_new;
      const float corr = expf(m[g] - base);  // 0 while m[g] is -inf
      float lsum = l[g] * corr;
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[g][j] *= corr;
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const float p = expf(s[i][g] - base);  // 0 for positions outside the context
        lsum += p;
        const uint32_t w[4] = {vr[i].x, vr[i].y, vr[i].z, vr[i].w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          acc[g][2 * j] = fmaf(p, bf16_low(w[j]), acc[g][2 * j]);
          acc[g][2 * j + 1] = fmaf(p, bf16_high(w[j]), acc[g][2 * j + 1]);
        }
      }
      l[g] = lsum;
      m[g] = m_new;
    }
  }

  // Sum over the row groups; lanes of the first row group leave the warp's state.
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
#pragma unroll
    for (int o = kLanesPerRow; o < 32; o *= 2) {
      l[g] += __shfl_xor_sync(0xffffffffu, l[g], o);
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[g][j] += __shfl_xor_sync(0xffffffffu, acc[g][j], o);
    }
    if (lane == 0) {
      merge.m[warp][g] = m[g];
      merge.l[warp][g] = l[g];
    }
    if (sub == 0) {
      float4* out = reinterpret_cast<float4*>(&sm_acc[warp][g][col]);
      out[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
      out[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
    }
  }
  if constexpr (kCluster)
    merge_cluster(merge, sm_acc, token, kv_head, q_heads, kGroup, kD, y);
  else
    merge_block(merge, sm_acc, token, kv_head, cache.kv_heads, split, splits, q_heads, kGroup, kD,
                partial, counters, y);
}

}  // namespace

void paged_attention_split(const float* q, const PagedLayer& cache, const TokenIndex& index,
                           int q_heads, int splits, float* partial, int* counters, float* y,
                           cudaStream_t stream) {
  if (index.tokens == 0) return;
  // An FP8 cache takes the generic instance (elementwise loads widened with the row scale).
  const int dims_per_lane = cache.head_dim % 32 == 0 && cache.k8 == nullptr ? cache.head_dim / 32 : 0;
  MOXIN_CHECK(splits >= 1 && splits <= kMaxSplits, "[cuda] paged_attention: ", splits,
              " splits (1..", kMaxSplits, ")");
  const size_t smem = split_smem_bytes(cache.head_dim);
  auto run = [&](auto kernel) {
    launch_split_k("paged_split_kernel", kernel, smem, false, false, q, cache, index, q_heads, splits,
                   partial, counters, y, stream);
  };
  switch (dims_per_lane) {
    case 1:
      run(paged_split_kernel<1>);
      break;
    case 2:
      run(paged_split_kernel<2>);
      break;
    case 3:
      run(paged_split_kernel<3>);
      break;
    case 4:
      run(paged_split_kernel<4>);
      break;
    default:
      run(paged_split_kernel<0>);
      break;
  }
}

bool paged_attention_warp_fits(int group, int head_dim) {
  return (head_dim == 64 || head_dim == 128) &&
         (group == 1 || group == 2 || group == 4 || group == 8);
}

namespace {

// Calls f with the register kernel for this head_dim, group and merge.
template <class F>
void with_warp_kernel(int head_dim, int group, bool cluster, F f) {
  auto by_group = [&](auto d, auto c) {
    constexpr int kD = decltype(d)::value;
    constexpr bool kC = decltype(c)::value;
    switch (group) {
      case 1:
        return f(paged_warp_kernel<kD, 1, kC>);
      case 2:
        return f(paged_warp_kernel<kD, 2, kC>);
      case 4:
        return f(paged_warp_kernel<kD, 4, kC>);
      default:
        return f(paged_warp_kernel<kD, 8, kC>);
    }
  };
  auto by_cluster = [&](auto d) {
    if (cluster)
      by_group(d, std::true_type{});
    else
      by_group(d, std::false_type{});
  };
  if (head_dim == 64)
    by_cluster(std::integral_constant<int, 64>{});
  else
    by_cluster(std::integral_constant<int, 128>{});
}

// Largest cluster of splits the device runs (16 where non-portable clusters fit, else the
// portable 8); set once by configure_paged_attention_split().
int max_cluster_splits = 8;

}  // namespace

void paged_attention_warp(const float* q, const PagedLayer& cache, const TokenIndex& index,
                          int q_heads, int splits, bool cluster_merge, float* partial,
                          int* counters, float* y, cudaStream_t stream) {
  if (index.tokens == 0) return;
  const int group = q_heads / cache.kv_heads;
  MOXIN_CHECK(
      splits >= 1 && splits <= kMaxSplits && paged_attention_warp_fits(group, cache.head_dim),
      "[cuda] paged_attention_warp: ", splits, " splits (1..", kMaxSplits, "), group ", group,
      " (1, 2, 4, 8), head_dim ", cache.head_dim, " (64, 128)");
  const bool cluster = cluster_merge && splits > 1 && splits <= max_cluster_splits;
  with_warp_kernel(cache.head_dim, group, cluster, [&](auto kernel) {
    launch_split_k("paged_warp_kernel", kernel, 0, cluster, false, q, cache, index, q_heads, splits,
                   partial, counters, y, stream);
  });
}

int paged_attention_max_splits() { return kMaxSplits; }

void configure_paged_attention_split() {
  // Clusters of up to 16 splits where the device co-schedules them (else 8, always allowed).
  for (int head_dim : {64, 128})
    for (int group : {1, 2, 4, 8})
      with_warp_kernel(head_dim, group, true, [&](auto kernel) {
        MOXIN_CUDA_CHECK(
            cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
      });
  with_warp_kernel(kMaxHeadDim, kMaxGroup, true,
                   [&](auto kernel) { max_cluster_splits = largest_cluster_splits(kernel, 0); });
  const int bytes = static_cast<int>(split_smem_bytes(kMaxHeadDim));
  MOXIN_CUDA_CHECK(cudaFuncSetAttribute(paged_split_kernel<1>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  MOXIN_CUDA_CHECK(cudaFuncSetAttribute(paged_split_kernel<2>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  MOXIN_CUDA_CHECK(cudaFuncSetAttribute(paged_split_kernel<3>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  MOXIN_CUDA_CHECK(cudaFuncSetAttribute(paged_split_kernel<4>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  MOXIN_CUDA_CHECK(cudaFuncSetAttribute(paged_split_kernel<0>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

}  // namespace moxin::cuda
