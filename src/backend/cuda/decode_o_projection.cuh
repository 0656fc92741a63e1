// The projection blocks of rope_paged_attention_o_mma (kernels.hpp): a batch-1 decode attention
// and the o projection after it in one launch. At batch 1 the projection reads 32 MB of weights
// for one row of activations; as its own kernel it could start only once the attention had
// drained, and a kernel boundary costs ~4.5 us at batch 1 (docs/cuda-notes.md, session 22). Here
// its blocks are resident beside the attention's from the start: each stages the first of its
// weight rows in shared memory and asks L2 for the rest while the attention walks the cache, then
// waits on a counter every attention block bumps after writing its outputs, and multiplies.
//
// The sums run in gemv_bf16's order (each lane over its 16-byte weight vectors in ascending
// order, then the warp's butterfly, then x + (sum + bias)), so the result has the GEMV's bits.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/bf16_dot.cuh"
#include "backend/cuda/cp_async.cuh"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/streaming_load.cuh"
#include "backend/cuda/warp_reduce.cuh"

namespace moxin::cuda::o_projection {

constexpr int kRowsPerPass = 4;  // weight rows a warp multiplies per read of the activations

// Rows of the projection a block multiplies: blocks share n in multiples of a pass of all warps.
__host__ __device__ constexpr int rows_per_block(int n, int blocks, int warps) {
  const int pass = warps * kRowsPerPass;
  return ((n + blocks - 1) / blocks + pass - 1) / pass * pass;
}

__device__ __forceinline__ int load_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Asks L2 for `bytes` (a multiple of 16) from p (16-byte aligned) without waiting for them.
__device__ __forceinline__ void prefetch_l2(const void* p, uint32_t bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
}

// The last statement of an attention block: its outputs are written; count it.
__device__ __forceinline__ void attention_block_done(int* sync) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(sync, 1);
  }
}

// kRowsPerPass rows of the projection dotted with the
// activations xs (shared memory): weights from shared memory where kStaged, else from global
// memory (L2 by then, mostly), kUnroll vectors of each row in flight.
template <bool kStaged>
__device__ __forceinline__ void multiply_pass(const uint4* rows, int vecs, const float4* xs, int lane,
                                              float (&acc)[kRowsPerPass]) {
  constexpr int kUnroll = kStaged ? 1 : 2;
  int vec = lane;
  for (; vec + (kUnroll - 1) * 32 < vecs; vec += kUnroll * 32) {
    uint4 w[kUnroll][kRowsPerPass];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int r = 0; r < kRowsPerPass; ++r) {
        const uint4* p = rows + static_cast<size_t>(r) * vecs + vec + u * 32;
        w[u][r] = kStaged ? *p : load_once_16(p);
      }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const float4 a = xs[2 * (vec + u * 32)], b = xs[2 * (vec + u * 32) + 1];
#pragma unroll
      for (int r = 0; r < kRowsPerPass; ++r) acc[r] = dot8(w[u][r], a, b, acc[r]);
    }
  }
  for (; vec < vecs; vec += 32) {
    const float4 a = xs[2 * vec], b = xs[2 * vec + 1];
#pragma unroll
    for (int r = 0; r < kRowsPerPass; ++r)
      acc[r] = dot8(kStaged ? rows[static_cast<size_t>(r) * vecs + vec]
                            : load_once_16(rows + static_cast<size_t>(r) * vecs + vec),
                    a, b, acc[r]);
  }
}

// Block `block` of `blocks` projection blocks (kThreads threads, `smem_bytes` of dynamic shared
// memory at `smem`): x[rows] += attn W[rows]^T + bias once `attention_blocks` blocks have counted
// themselves done. k: the projection's inputs (k % 8 == 0, k * 4 <= smem_bytes) and n % kRowsPerPass
// == 0, so that every block's rows are whole passes: the host checks.
template <int kThreads>
__device__ void multiply_after_attention(const DecodeOProjection& o, const float* attn, int k, int block, int blocks,
                                         int attention_blocks, unsigned char* smem, size_t smem_bytes) {
  constexpr int kWarps = kThreads / 32;
  const int vecs = k / 8;
  const size_t row_bytes = static_cast<size_t>(k) * 2;
  const int per_block = rows_per_block(o.n, blocks, kWarps);
  const int first = min(o.n, block * per_block);
  const int rows = min(o.n, first + per_block) - first;
  auto* xs = reinterpret_cast<float4*>(smem);
  auto* staged_rows = reinterpret_cast<uint4*>(smem + static_cast<size_t>(k) * sizeof(float));
  // Whole passes only, so that a pass reads its rows from one place.
  const int staged = min(rows, static_cast<int>((smem_bytes - static_cast<size_t>(k) * sizeof(float)) / row_bytes)) /
                     kRowsPerPass * kRowsPerPass;
  const auto* w = reinterpret_cast<const uint4*>(o.w) + static_cast<size_t>(first) * vecs;
  for (int i = threadIdx.x; i < staged * vecs; i += kThreads) copy16_async(staged_rows + i, w + i);
  copies_issued();
  if (threadIdx.x == 0 && rows > staged)
    prefetch_l2(w + static_cast<size_t>(staged) * vecs, static_cast<uint32_t>((rows - staged) * row_bytes));

  wait_for_prior_kernels();  // the residual row is the previous kernels'
  if (threadIdx.x == 0)
    while (load_acquire(o.sync) < attention_blocks) __nanosleep(64);
  __syncthreads();
  // The attention's outputs, written by other blocks of this launch: through L2, never L1.
  for (int i = threadIdx.x; i < k / 4; i += kThreads) xs[i] = __ldcg(reinterpret_cast<const float4*>(attn) + i);
  wait_staged<0>();
  __syncthreads();

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  for (int r0 = warp * kRowsPerPass; r0 < rows; r0 += kWarps * kRowsPerPass) {
    float acc[kRowsPerPass] = {};
    if (r0 < staged)
      multiply_pass<true>(staged_rows + static_cast<size_t>(r0) * vecs, vecs, xs, lane, acc);
    else
      multiply_pass<false>(w + static_cast<size_t>(r0) * vecs, vecs, xs, lane, acc);
#pragma unroll
    for (int r = 0; r < kRowsPerPass; ++r) acc[r] = warp_sum(acc[r]);
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < kRowsPerPass; ++r) {
        float& out = o.x[first + r0 + r];
        out = out + (acc[r] + (o.bias ? o.bias[first + r0 + r] : 0.0f));
      }
    }
  }

  __syncthreads();
  if (threadIdx.x == 0 && atomicAdd(o.sync + 1, 1) == blocks - 1) {
    o.sync[0] = 0;  // every projection block is past its wait: ready for the next launch
    o.sync[1] = 0;
  }
}

}  // namespace moxin::cuda::o_projection
