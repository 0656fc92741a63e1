// Decode-time linear on the tensor cores: y[M, N] = bf16(x[M, K]) W[N, K]^T (+ bias) for
// 1 <= M <= kSkinnyMaxRows, bf16 weights, f32 activations in and f32 sums out.
//
// A decode step's linears read every weight once for a handful of tokens, so they must stream
// the weights at copy bandwidth whatever M is. The CUDA-core GEMV spends ~2 instructions per
// weight per token (unpack + FMA, and an L1 read of x per 8 weights and token), which caps it
// at M ~ 4; here weights are the A operand of mma.sync m16n8k16 (16 weight rows per tile) and
// tokens the B operand (8 per tile), so one tensor-core instruction covers 256 weights for 8
// tokens and the weight stream stays the only cost up to M = 64.
//
// Loads skip shared memory: each lane takes its A fragment straight from global memory
// (weight_chunk.cuh); the B fragment of the same lane takes the same four inputs of its token g,
// read as one float4 of x and rounded to bf16 pairs.
//
// A block is kWarps warps that share its 16 R weight rows and deal the K chunks among themselves
// (warp w takes chunks w, w + kWarps, ...): 4096 rows still make 256 blocks of 8 warps, enough
// loads in flight on every SM. The warps' partial sums meet in shared memory and are added in
// warp order, so the result is deterministic and the same for every M that uses this tiling.
#include <cuda_bf16.h>

#include "backend/cuda/attention_mma.cuh"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/weight_chunk.cuh"

namespace moxin::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kLanes = 32;

// NT tiles of 8 tokens, R tiles of 16 weight rows per block; U chunks of loads in flight per warp.
template <int NT, int R, int U>
__global__ void __launch_bounds__(kWarps* kLanes)
    skinny_gemm_kernel(const float* __restrict__ x, int m, const uint16_t* __restrict__ w,
                       const float* __restrict__ bias, float* __restrict__ y, int n, int k) {
  __shared__ float partial[kWarps][16][8 * NT];
  const int lane = threadIdx.x % kLanes;
  const int warp = threadIdx.x / kLanes;
  const int g = lane / 4, t = lane % 4;
  const int row0 = blockIdx.x * 16 * R;
  const uint16_t* rows[R][2];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int h = 0; h < 2; ++h)
      rows[r][h] = w + static_cast<size_t>(min(row0 + 16 * r + 8 * h + g, n - 1)) * k + lane_input(t);
  const int chunks = (k + kWeightChunk - 1) / kWeightChunk;

  float acc[R][NT][4];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[r][j][e] = 0.0f;

  // The weights never depend on earlier kernels: the first loads go out while the kernel that
  // writes x drains (programmatic dependent launch).
  ChunkWeights<R> next[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int c = warp + u * kWarps;
    if (c < chunks) next[u].load(rows, c * kWeightChunk, k - lane_input(t));
  }
  wait_for_prior_kernels();

  for (int c0 = warp; c0 < chunks; c0 += U * kWarps) {
    ChunkWeights<R> cur[U];
#pragma unroll
    for (int u = 0; u < U; ++u) cur[u] = next[u];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = c0 + (U + u) * kWarps;
      if (c < chunks) next[u].load(rows, c * kWeightChunk, k - lane_input(t));
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = c0 + u * kWarps;
      if (c >= chunks) break;
      const int kc = c * kWeightChunk;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int token = 8 * j + g;
        const float* xr = x + static_cast<size_t>(token) * k + kc;
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          const bool valid = token < m && kc + step_input(t, s) < k;
          const float4 v = valid ? __ldg(reinterpret_cast<const float4*>(xr + step_input(t, s)))
                                 : make_float4(0.f, 0.f, 0.f, 0.f);
          const uint32_t b0 = pack_bf16(v.x, v.y), b1 = pack_bf16(v.z, v.w);
#pragma unroll
          for (int r = 0; r < R; ++r) {
            uint32_t a[4];
            cur[u].fragment(r, s, a);
            mma_bf16(acc[r][j], a, b0, b1);
          }
        }
      }
    }
  }
  allow_dependents();

  // Warps' partial sums, added in warp order; C fragment: rows g, g + 8 x tokens 2t, 2t + 1.
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      partial[warp][g][8 * j + 2 * t] = acc[r][j][0];
      partial[warp][g][8 * j + 2 * t + 1] = acc[r][j][1];
      partial[warp][g + 8][8 * j + 2 * t] = acc[r][j][2];
      partial[warp][g + 8][8 * j + 2 * t + 1] = acc[r][j][3];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < 16 * 8 * NT; e += kWarps * kLanes) {
      const int row_in_tile = e % 16, token = e / 16;
      const int row = row0 + 16 * r + row_in_tile;
      if (token < m && row < n) {
        float sum = bias ? bias[row] : 0.0f;
#pragma unroll
        for (int v = 0; v < kWarps; ++v) sum += partial[v][row_in_tile][token];
        y[static_cast<size_t>(token) * n + row] = sum;
      }
    }
    __syncthreads();
  }
}

template <int NT, int R, int U>
void launch(const float* x, int m, const bf16_bits* w, const float* bias, float* y, int n, int k,
            cudaStream_t stream) {
  const int blocks = (n + 16 * R - 1) / (16 * R);
  launch_kernel("skinny_gemm_kernel", skinny_gemm_kernel<NT, R, U>, blocks, kWarps * kLanes, 0,
                stream, x, m, w, bias, y, n, k);
}

// Token tiles: M rounded up to 8, 16, 32 or 64. With more tokens each weight fragment serves more
// mma steps and the x reads per weight byte grow; two row tiles per block halve them.
template <int R, int U>
bool launch_tiling(const float* x, int m, const bf16_bits* w, const float* bias, float* y, int n,
                   int k, cudaStream_t stream) {
  if (m <= 8)
    launch<1, R, U>(x, m, w, bias, y, n, k, stream);
  else if (m <= 16)
    launch<2, R, U>(x, m, w, bias, y, n, k, stream);
  else if (m <= 32)
    launch<4, R, U>(x, m, w, bias, y, n, k, stream);
  else if (m <= 64)
    launch<8, R, U>(x, m, w, bias, y, n, k, stream);
  else
    return false;
  return true;
}

}  // namespace

bool skinny_gemm_usable(const float* x, const bf16_bits* w, int m, int k) {
  return m >= 1 && m <= kSkinnyMaxRows && k % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

void skinny_gemm_bf16(const float* x, int m, const bf16_bits* w, const float* bias, float* y, int n,
                      int k, cudaStream_t stream) {
  MOXIN_CHECK(skinny_gemm_usable(x, w, m, k), "[cuda] skinny_gemm_bf16: ", m, " rows of ", k,
              " inputs (needs 1..", kSkinnyMaxRows, " rows, K % 8 == 0, 16-byte aligned x and W)");
  if (n == 0) return;
  // Up to 8 tokens one chunk in flight per warp: fewer registers, more warps per SM, and with
  // sector-sized loads that streams best (H100, session 19: [6144 x 4096] at 8 rows 79% of copy
  // against 63% with two chunks, [4096 x 4096] 70% against 66%, equal or better at one row).
  // 9..16 tokens: two chunks (96-126 registers: 2 blocks per SM); 17..32 tokens share x reads
  // across two row tiles (128); 33..64 tokens hold 32 accumulators per tile, so one tile, one
  // chunk (98; two tiles would spill).
  if (m <= 8)
    launch_tiling<1, 1>(x, m, w, bias, y, n, k, stream);
  else if (m <= 16)
    launch_tiling<1, 2>(x, m, w, bias, y, n, k, stream);
  else if (m <= 32)
    launch_tiling<2, 1>(x, m, w, bias, y, n, k, stream);
  else
    launch_tiling<1, 1>(x, m, w, bias, y, n, k, stream);
}

bool skinny_gemm_variant(int row_tiles, int unroll, const float* x, int m, const bf16_bits* w,
                         const float* bias, float* y, int n, int k, cudaStream_t stream) {
  if (!skinny_gemm_usable(x, w, m, k) || n == 0) return false;
  const int key = row_tiles * 10 + unroll;
  switch (key) {
    case 11:
      return launch_tiling<1, 1>(x, m, w, bias, y, n, k, stream);
    case 12:
      return launch_tiling<1, 2>(x, m, w, bias, y, n, k, stream);
    case 14:
      return launch_tiling<1, 4>(x, m, w, bias, y, n, k, stream);
    case 21:
      return launch_tiling<2, 1>(x, m, w, bias, y, n, k, stream);
    case 22:
      return launch_tiling<2, 2>(x, m, w, bias, y, n, k, stream);
    default:
      return false;
  }
}

}  // namespace moxin::cuda
