// The block-level core of the tensor-core attention kernels (ViT and paged prefill): a tile of
// 16 query rows per warp against successive tiles of 64 keys, flash-attention style.
// S = Q K^T and O += P V run as bf16 mma.sync m16n8k16 with f32 accumulation; the online
// softmax runs in f32 (base 2) on the S fragments, and P is rounded to bf16 for the second product.
// Q, K and V sit in shared memory as bf16 rows padded to a multiple of 16 dims (+8 elements
// of row padding so that ldmatrix rows fall in distinct banks).
//
// Fragment layouts (PTX ISA, mma.m16n8k16, g = lane / 4, t = lane % 4): A regs hold rows
// {g, g+8} x cols {2t, 2t+1} and the same +8 cols; B regs hold k {2t, 2t+1} (+8) x col g;
// C holds rows {g, g+8} x cols {2t, 2t+1}. C of S = Q K^T is therefore already P's A layout.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/cp_async.cuh"

namespace moxin::cuda {

constexpr int kMmaRows = 64;  // keys per tile
constexpr float kLog2e = 1.4426950408889634f;

inline int mma_padded_dim(int head_dim) { return (head_dim + 15) / 16 * 16; }
inline int mma_row_stride(int head_dim) { return mma_padded_dim(head_dim) + 8; }
// Q rows of the warps, then kv_stages pairs of K and V tiles.
inline size_t mma_smem_bytes(int head_dim, int warps, int kv_stages = 1) {
  return size_t(16 * warps + 2 * kMmaRows * kv_stages) * mma_row_stride(head_dim) *
         sizeof(__nv_bfloat16);
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}

// d += a * b (16x8x16, bf16 inputs, f32 accumulators)
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// d += a * b (16x8x16, f16 inputs, f32 accumulators)
__device__ __forceinline__ void mma_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x on the special-function unit alone. exp2f wraps the same instruction in a range check and
// two multiplies to produce subnormal results; here they flush to 0 (ftz), which only a
// probability below 2^-126 of its row's largest can suffer: its share of the sum is below f32's
// resolution anyway.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// KD = padded head_dim / 16 (1..8); kWarps warps of 16 query rows each. kQInRegisters: the
// warp's Q fragments stay in registers from load_q() on (32 of them at KD = 8), or are re-read
// from shared memory for every key tile (q must then stay intact), leaving room for more
// blocks per SM.
template <int KD, int kWarps, bool kQInRegisters = true>
struct MmaAttention {
  static constexpr int kQueryRows = 16 * kWarps;
  __nv_bfloat16* q;  // [kQueryRows][stride], filled by the caller
  __nv_bfloat16* k;  // [kMmaRows][stride], filled by the caller per key tile (zeros past the end)
  __nv_bfloat16* v;
  static constexpr int stride = 16 * KD + 8;  // = mma_row_stride(head_dim)
  uint32_t qa[kQInRegisters ? KD : 1][4];     // this warp's Q rows as A fragments (kQInRegisters)
  float o[2 * KD][4];                         // O accumulators: n-tiles of 8 dims
  float m[2];                                 // running max of rows g and g + 8
  float l[2];                                 // this lane's share of the running sums

  __device__ explicit MmaAttention(__nv_bfloat16* smem) {
    q = smem;
    use_stage(0);
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;
#pragma unroll
    for (int n = 0; n < 2 * KD; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[n][e] = 0.0f;
  }

  // K and V of stage s (of the kv_stages that mma_smem_bytes sized) become the tile to consume.
  __device__ void use_stage(int s) {
    k = q + kQueryRows * stride + s * 2 * kMmaRows * stride;
    v = k + kMmaRows * stride;
  }

  // After q is filled and the block synchronized.
  __device__ void load_q() {
    if constexpr (kQInRegisters) {
#pragma unroll
      for (int ks = 0; ks < KD; ++ks) read_q_fragment(ks, qa[ks]);
    }
  }

  // The warp's Q rows, dims 16 ks .. 16 ks + 15, as an A fragment.
  __device__ void read_q_fragment(int ks, uint32_t (&a)[4]) const {
    const int lane = threadIdx.x % 32;
    const int row = (threadIdx.x / 32) * 16 + lane % 16;
    ldmatrix_x4(a, q + row * stride + ks * 16 + (lane / 16) * 8);
  }

  // Keys [key0, key0 + n) are in k and v. Row g of this lane may see keys <= limit[0], row
  // g + 8 keys <= limit[1] (-1: none). The caller skips the call when no row of the warp can
  // see key0 (all of the tile's work would be masked), and passes kMasked = false when every row
  // of the warp sees all 64 keys (no compare per score). scale_log2 = softmax scale * log2(e):
  // the softmax runs in base 2 (one ex2 per score instead of expf's range reduction).
  template <bool kMasked = true>
  __device__ void consume(int key0, int n, float scale_log2, const int (&limit)[2]) {
    const int lane = threadIdx.x % 32;
    const int t = lane % 4;
    float s[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = 0.0f;
    // Dims outer, keys inner: a Q fragment read from shared memory serves all 64 keys. Each
    // score still sums its dims in order, so both Q placements give the same bits.
#pragma unroll
    for (int ks = 0; ks < KD; ++ks) {
      uint32_t a[4];
      if constexpr (kQInRegisters) {
#pragma unroll
        for (int e = 0; e < 4; ++e) a[e] = qa[ks][e];
      } else {
        read_q_fragment(ks, a);
      }
#pragma unroll
      for (int pair = 0; pair < 4; ++pair) {
        uint32_t b[4];
        ldmatrix_x4(b, k + (pair * 16 + lane % 8 + (lane / 16) * 8) * stride + ks * 16 +
                           ((lane / 8) % 2) * 8);
        mma_bf16(s[2 * pair], a, b[0], b[1]);
        mma_bf16(s[2 * pair + 1], a, b[2], b[3]);
      }
    }

    // The maximum is taken on the raw scores and scaled once (the scale is positive, and rounding
    // is monotonic: the same m as scaling every score first); each probability is then one fma
    // and one ex2.
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = nt * 8 + 2 * t + (e & 1);
        const int r = e / 2;
        if (kMasked && !(col < n && key0 + col <= limit[r])) s[nt][e] = -INFINITY;
        tile_max[r] = fmaxf(tile_max[r], s[nt][e]);
      }
    float corr[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
      const float m_new = fmaxf(m[r], tile_max[r] * scale_log2);
      const float base = m_new == -INFINITY ? 0.0f : m_new;
      corr[r] = exp2_approx(m[r] - base);  // 0 while m is -inf
      m[r] = m_new;
      tile_max[r] = base;
      l[r] *= corr[r];
    }
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = exp2_approx(fmaf(s[nt][e], scale_log2, -tile_max[e / 2]));
        l[e / 2] += s[nt][e];
      }
    if (__any_sync(0xffffffffu, corr[0] != 1.0f || corr[1] != 1.0f)) {  // the maxima moved (warp-uniform)
#pragma unroll
      for (int n = 0; n < 2 * KD; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[n][e] *= corr[e / 2];
    }

#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {  // 16 keys per step
      const uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]),
                              pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                              pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < KD; ++dp) {  // 16 dims per step
        uint32_t b[4];
        ldmatrix_x4_trans(b, v + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * stride + dp * 16 +
                                 (lane / 16) * 8);
        mma_bf16(o[2 * dp], pa, b[0], b[1]);
        mma_bf16(o[2 * dp + 1], pa, b[2], b[3]);
      }
    }
  }

  // out(row_in_tile, dim, value) for dims < head_dim; rows that saw no key get NaN.
  template <class Out>
  __device__ void finish(int head_dim, Out out) {
    const int lane = threadIdx.x % 32;
    const int row0 = (threadIdx.x / 32) * 16 + lane / 4;
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float sum = l[r];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      inv[r] = sum > 0.0f ? 1.0f / sum : __int_as_float(0x7fc00000);
    }
#pragma unroll
    for (int n = 0; n < 2 * KD; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int d = n * 8 + 2 * (lane % 4) + (e & 1);
        if (d < head_dim) out(row0 + 8 * (e / 2), d, o[n][e] * inv[e / 2]);
      }
  }
};

template <int KD, int kWarps, int kKvStages = 1, class Kernel>
cudaError_t allow_mma_smem(Kernel kernel) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(mma_smem_bytes(16 * KD, kWarps, kKvStages)));
}

}  // namespace moxin::cuda
