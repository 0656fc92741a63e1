// The projection blocks of rope_paged_attention_o_mma (kernels.hpp): a batch-1 decode attention
// and the o projection after it in one launch. At batch 1 the projection reads 32 MB of weights
// for one row of activations; as its own kernel it could start only once the attention had
// drained, and a kernel boundary costs ~4.5 us at batch 1 (docs/cuda-notes.md, session 22). Here
// its blocks are resident beside the attention's from the start: each requests the first items of
// its rows into a shared-memory ring and asks L2 for the rest while the attention walks the cache,
// then waits on a counter every attention block bumps after writing its outputs, and multiplies
// item by item while the next ones land.
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

constexpr int kGroupRows = 16;  // rows of a ring stage: a pass of kRowsPerPass rows per warp (4 warps)
constexpr int kStages = 2;

// Inputs (16-byte vectors of 8) per chunk of a row in a ring stage: the most that kStages stages
// of kGroupRows rows hold beside the activations in smem_bytes, a multiple of 32 (0: none fits).
__host__ __device__ constexpr int ring_chunk_vecs(int k, size_t smem_bytes) {
  const size_t left = smem_bytes > static_cast<size_t>(k) * 4 ? smem_bytes - static_cast<size_t>(k) * 4 : 0;
  const int fit = static_cast<int>(left / (kStages * kGroupRows * 16)) / 32 * 32;
  return fit < k / 8 ? fit : (k / 8 + 31) / 32 * 32;
}

// Block `block` of `blocks` projection blocks (kThreads threads, `smem_bytes` of dynamic shared
// memory at `smem`): x[rows] += attn W[rows]^T + bias once `attention_blocks` blocks have counted
// themselves done. The block's rows go through shared memory in items of kGroupRows rows x one
// chunk of inputs, kStages items in flight (cp.async): after the wait each warp multiplies its
// kRowsPerPass rows of an item while the next lands, so that a block keeps ~64 KB in flight (v1
// read the rows past its staged ones with plain loads after the wait: a chain of L2 round trips per
// warp with a few warps an SM, 3% slower than the two kernels). The host checks k % 8 == 0,
// ring_chunk_vecs(k, smem_bytes) >= 32 and n % kRowsPerPass == 0 (every block's rows are whole
// passes).
template <int kThreads>
__device__ void multiply_after_attention(const DecodeOProjection& o, const float* attn, int k, int block, int blocks,
                                         int attention_blocks, unsigned char* smem, size_t smem_bytes) {
  constexpr int kWarps = kThreads / 32;
  static_assert(kWarps * kRowsPerPass == kGroupRows, "a stage is one pass of every warp");
  const int vecs = k / 8;
  const int cv = ring_chunk_vecs(k, smem_bytes);
  const int chunks = (vecs + cv - 1) / cv;
  const size_t row_bytes = static_cast<size_t>(k) * 2;
  const int per_block = rows_per_block(o.n, blocks, kWarps);
  const int first = min(o.n, block * per_block);
  const int rows = min(o.n, first + per_block) - first;
  const int items = (rows + kGroupRows - 1) / kGroupRows * chunks;
  auto* xs = reinterpret_cast<float4*>(smem);
  auto* stages = reinterpret_cast<uint4*>(smem + static_cast<size_t>(k) * sizeof(float));
  const auto* w = reinterpret_cast<const uint4*>(o.w) + static_cast<size_t>(first) * vecs;
  auto issue = [&](int item) {
    if (item < items) {
      const int g = item / chunks, c = item % chunks;
      const int nv = min(cv, vecs - c * cv), group_rows = min(kGroupRows, rows - g * kGroupRows);
      uint4* stage = stages + static_cast<size_t>(item % kStages) * kGroupRows * cv;
      for (int i = threadIdx.x; i < group_rows * nv; i += kThreads) {
        const int r = i / nv, v = i % nv;
        copy16_async(stage + r * cv + v, w + static_cast<size_t>(g * kGroupRows + r) * vecs + c * cv + v);
      }
    }
    copies_issued();
  };
  for (int i = 0; i < kStages; ++i) issue(i);
  wait_for_prior_kernels();  // the residual row is the previous kernels'
  // Asked for only now: while the previous kernel (the qkv GEMV, 50 MB) streams through L2 the lines
  // would be evicted before use.
  if (threadIdx.x == 0 && rows > 0) prefetch_l2(w, static_cast<uint32_t>(rows * row_bytes));
  if (threadIdx.x == 0)
    while (load_acquire(o.sync) < attention_blocks) __nanosleep(64);
  __syncthreads();
  // The attention's outputs, written by other blocks of this launch: through L2, never L1.
  for (int i = threadIdx.x; i < k / 4; i += kThreads) xs[i] = __ldcg(reinterpret_cast<const float4*>(attn) + i);

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  float acc[kRowsPerPass] = {};
  for (int item = 0; item < items; ++item) {
    wait_staged<kStages - 1>();  // this item has landed (the next may still fly)
    __syncthreads();
    const int g = item / chunks, c = item % chunks;
    const int r0 = g * kGroupRows + warp * kRowsPerPass;
    if (r0 < rows) {
      const uint4* own = stages + static_cast<size_t>(item % kStages) * kGroupRows * cv +
                         static_cast<size_t>(warp * kRowsPerPass) * cv;
      const int nv = min(cv, vecs - c * cv);
      for (int v = lane; v < nv; v += 32) {
        const float4 a = xs[2 * (c * cv + v)], b = xs[2 * (c * cv + v) + 1];
#pragma unroll
        for (int r = 0; r < kRowsPerPass; ++r) acc[r] = dot8(own[r * cv + v], a, b, acc[r]);
      }
      if (c == chunks - 1) {
#pragma unroll
        for (int r = 0; r < kRowsPerPass; ++r) acc[r] = warp_sum(acc[r]);
        if (lane == 0) {
#pragma unroll
          for (int r = 0; r < kRowsPerPass; ++r) {
            float& out = o.x[first + r0 + r];
            out = out + (acc[r] + (o.bias ? o.bias[first + r0 + r] : 0.0f));
          }
        }
#pragma unroll
        for (int r = 0; r < kRowsPerPass; ++r) acc[r] = 0.0f;
      }
    }
    __syncthreads();  // the stage is read: refill it
    issue(item + kStages);
  }
  wait_staged<0>();
  __syncthreads();
  if (threadIdx.x == 0 && atomicAdd(o.sync + 1, 1) == blocks - 1) {
    o.sync[0] = 0;  // every projection block is past its wait: ready for the next launch
    o.sync[1] = 0;
  }
}

}  // namespace moxin::cuda::o_projection
