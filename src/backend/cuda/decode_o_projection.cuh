// The projection blocks of rope_paged_attention_o_mma (kernels.hpp): a batch-1 decode attention
// and the o projection after it in one launch. At batch 1 the projection reads 32 MB of weights
// for one row of activations; as its own kernel it could start only once the attention had
// drained, and a kernel boundary costs ~4.5 us at batch 1 (docs/cuda-notes.md, session 22). Here
// its blocks are resident beside the attention's from the start and bring most of their rows on
// chip while the attention walks the cache: the first rows into registers, the next into shared
// memory, the rest into L2. Then they wait on a counter every attention block bumps after writing
// its outputs, and multiply.
//
// Session 24 measured why a shared-memory ring (v2) lost to the two kernels: with the attention's
// 104 KB of shared memory a block, an SM holds 8 warps, and after the wait they streamed 32 MB
// through a ring with a barrier per item (barrier stalls first, 1.3 TB/s). Here nothing is
// streamed through shared memory after the wait, and no barrier separates the rows.
//
// The sums run in gemv_bf16's order (each lane over its 16-byte weight vectors lane, lane + 32,
// ... in ascending order, then the warp's butterfly, then x + (sum + bias)), so the result has the
// GEMV's bits.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "backend/cuda/bf16_dot.cuh"
#include "backend/cuda/cp_async.cuh"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/warp_reduce.cuh"

namespace moxin::cuda::o_projection {

// Inputs of the projection (q_heads x head_dim) this role takes: a row is one pass of a warp, each
// lane holding at most kLaneVecs 16-byte vectors of it.
constexpr int kMaxInputs = 4096;
constexpr int kLaneVecs = kMaxInputs / 8 / 32;
// Rows each warp holds in registers: loaded before the wait, and again for the rows past what
// shared memory holds, loaded after it.
constexpr int kHeldRows = 2;

// Rows of the projection a block multiplies.
__host__ __device__ constexpr int rows_per_block(int n, int blocks) { return (n + blocks - 1) / blocks; }

// Rows of k inputs that fit in `smem_bytes` of shared memory beside the attention's output (k floats).
__host__ __device__ constexpr int shared_rows(int k, size_t smem_bytes) {
  const size_t activations = static_cast<size_t>(k) * sizeof(float);
  return smem_bytes > activations ? static_cast<int>((smem_bytes - activations) / (static_cast<size_t>(k) * 2)) : 0;
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

// A weight vector read once, issued where it stands in the code: volatile so that the compiler
// does not sink a load issued before the wait to its use after it.
__device__ __forceinline__ uint4 load_now_16(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// The last statement of an attention block: its outputs are written; count it.
__device__ __forceinline__ void attention_block_done(int* sync) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(sync, 1);
  }
}

// This lane's vectors of `row` (vecs vectors of 8 weights) into v; zeros past the row.
__device__ __forceinline__ void hold_row(const uint4* row, int vecs, int lane, uint4 (&v)[kLaneVecs]) {
#pragma unroll
  for (int j = 0; j < kLaneVecs; ++j)
    v[j] = lane + 32 * j < vecs ? load_now_16(row + lane + 32 * j) : make_uint4(0, 0, 0, 0);
}

// A lane's view of a row staged in shared memory, indexed like its registers.
struct StagedRow {
  const uint4* row;
  int lane;
  __device__ uint4 operator[](int j) const { return row[lane + 32 * j]; }
};

// x[rows[s]] += (the warp's dot of row s with the activations xs) + bias for each s with rows[s] >= 0,
// row s's vectors at vectors[s] (registers or StagedRow: anything indexed by j for vector lane + 32 j).
// The rows' sums interleave (independent chains of fma) and share each read of xs.
template <class Vectors>
__device__ __forceinline__ void finish_rows(const DecodeOProjection& o, const int (&rows)[kHeldRows],
                                            const Vectors& vectors, const float4* xs, int vecs, int lane) {
  float acc[kHeldRows] = {};
#pragma unroll
  for (int j = 0; j < kLaneVecs; ++j) {
    const int v = lane + 32 * j;
    if (v < vecs) {
      const float4 a = xs[2 * v], b = xs[2 * v + 1];
#pragma unroll
      for (int s = 0; s < kHeldRows; ++s) acc[s] = dot8(vectors[s][j], a, b, acc[s]);
    }
  }
#pragma unroll
  for (int s = 0; s < kHeldRows; ++s) acc[s] = warp_sum(acc[s]);
  if (lane == 0) {
#pragma unroll
    for (int s = 0; s < kHeldRows; ++s)
      if (rows[s] >= 0) {
        float& out = o.x[rows[s]];
        out = out + (acc[s] + (o.bias ? o.bias[rows[s]] : 0.0f));
      }
  }
}

// Block `block` of `blocks` projection blocks (kThreads threads, `smem_bytes` of dynamic shared
// memory at `smem`): x[rows] += attn W[rows]^T + bias once `attention_blocks` blocks have counted
// themselves done. Of the block's rows, warp w holds rows w and w + warps in registers, the next
// shared_rows() are copied into shared memory (cp.async), both requested before the grid
// dependency wait; the rest are asked of L2 then and read into registers after the wait, while
// the staged rows are multiplied. The host checks k % 8 == 0 and k <= kMaxInputs.
template <int kThreads>
__device__ void multiply_after_attention(const DecodeOProjection& o, const float* attn, int k, int block, int blocks,
                                         int attention_blocks, unsigned char* smem, size_t smem_bytes) {
  constexpr int kWarps = kThreads / 32;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int vecs = k / 8;
  const int per_block = rows_per_block(o.n, blocks);
  const int first = min(o.n, block * per_block);
  const int rows = min(o.n, first + per_block) - first;
  const int held_rows = min(rows, kWarps * kHeldRows);
  const int staged_rows = min(rows - held_rows, shared_rows(k, smem_bytes));
  const int late_first = held_rows + staged_rows;
  const auto* w = reinterpret_cast<const uint4*>(o.w) + static_cast<size_t>(first) * vecs;
  auto* xs = reinterpret_cast<float4*>(smem);
  auto* staged = reinterpret_cast<uint4*>(smem + static_cast<size_t>(k) * sizeof(float));

  for (int i = threadIdx.x; i < staged_rows * vecs; i += kThreads)
    copy16_async(staged + i, w + static_cast<size_t>(held_rows) * vecs + i);
  copies_issued();
  uint4 held[kHeldRows][kLaneVecs];
#pragma unroll
  for (int s = 0; s < kHeldRows; ++s)
    if (warp + s * kWarps < held_rows) hold_row(w + static_cast<size_t>(warp + s * kWarps) * vecs, vecs, lane, held[s]);
  wait_for_prior_kernels();  // the residual row is the previous kernels'
  // Asked for only now: while the previous kernel (the qkv GEMV, 50 MB) streams through L2 the
  // lines would be evicted before use.
  if (threadIdx.x == 0 && rows > late_first)
    prefetch_l2(w + static_cast<size_t>(late_first) * vecs, static_cast<uint32_t>((rows - late_first) * k * 2));
  if (threadIdx.x == 0) {
    while (load_acquire(o.sync) < attention_blocks) __nanosleep(64);
    // Every projection block is past its wait once all have counted here: the last one zeroes
    // the counters for the next launch (graph replays need no memset).
    if (atomicAdd(o.sync + 1, 1) == blocks - 1) {
      o.sync[0] = 0;
      o.sync[1] = 0;
    }
  }
  __syncthreads();
  // The attention's outputs, written by other blocks of this launch: through L2, never L1.
  for (int i = threadIdx.x; i < k / 4; i += kThreads) xs[i] = __ldcg(reinterpret_cast<const float4*>(attn) + i);
  __syncthreads();

  {
    int held_at[kHeldRows];
#pragma unroll
    for (int s = 0; s < kHeldRows; ++s) held_at[s] = warp + s * kWarps < held_rows ? first + warp + s * kWarps : -1;
    finish_rows(o, held_at, held, xs, vecs, lane);
  }
  // The first late rows fly while the staged ones are multiplied.
  int late = late_first + warp * kHeldRows;
#pragma unroll
  for (int s = 0; s < kHeldRows; ++s)
    if (late + s < rows) hold_row(w + static_cast<size_t>(late + s) * vecs, vecs, lane, held[s]);
  wait_staged<0>();
  __syncthreads();
  for (int r = warp; r < staged_rows; r += kWarps * kHeldRows) {
    int staged_at[kHeldRows];
    StagedRow views[kHeldRows];
#pragma unroll
    for (int s = 0; s < kHeldRows; ++s) {
      const int row = r + s * kWarps;
      staged_at[s] = row < staged_rows ? first + held_rows + row : -1;
      views[s] = StagedRow{staged + static_cast<size_t>(row < staged_rows ? row : r) * vecs, lane};
    }
    finish_rows(o, staged_at, views, xs, vecs, lane);
  }
  while (late < rows) {
    int late_at[kHeldRows];
#pragma unroll
    for (int s = 0; s < kHeldRows; ++s) late_at[s] = late + s < rows ? first + late + s : -1;
    finish_rows(o, late_at, held, xs, vecs, lane);
    late += kWarps * kHeldRows;
#pragma unroll
    for (int s = 0; s < kHeldRows; ++s)
      if (late + s < rows) hold_row(w + static_cast<size_t>(late + s) * vecs, vecs, lane, held[s]);
  }
}

}  // namespace moxin::cuda::o_projection
