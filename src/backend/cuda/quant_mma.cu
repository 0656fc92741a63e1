// Batched-decode linear with quantized weights (9 <= M <= 64): y[M, N] = x[M, K] W^T with
// mma.sync m16n8k16 (bf16 in, f32 accumulation). Weights are the A operand (16 rows per tile),
// activations the B operand (8 tokens per tile), so the weights are read once per call for up
// to 64 tokens and dequantized straight into A fragments, never to memory.
//
// The sum over k does not care in which order k comes, so each lane takes its A fragment from
// 16 contiguous bytes of codes per row (one group, one scale/bias pair) and the activations are
// stored in the order the code pairs come out of a word (4-bit: x0 x4 x1 x5 x2 x6 x3 x7 per
// chunk of 8, see code_pair_bf16; 8-bit: natural order). Lane t of a quad then owns inputs
// [t * E, (t + 1) * E) of every K block of 4 * E inputs (E = 32 for 4-bit, 16 for 8-bit); mma
// step s takes its pairs 2s and 2s + 1, i.e. 4 consecutive reordered activations per token (one
// 8-byte load).
//
// A block is kWarps warps on the same 32 weight rows (two m16 tiles), each warp a strided share
// of the K blocks with the next block's codes loaded while the current one is multiplied; the
// partial sums meet in shared memory. Dequantization: bf16 scales use the bf16x2 FMA (one
// rounding of scale * q + bias); f32 scales an f32 FMA then a bf16 rounding, as
// quant_dequantize_bf16. Both give the bf16 nearest to the f32 value scale * q + bias except
// when that f32 value itself was rounded onto a bf16 tie (not seen in practice).
#include <cuda_bf16.h>

#include "backend/cuda/attention_mma.cuh"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/quant_format.cuh"

namespace moxin::cuda {
namespace {

constexpr int kLanes = 32;
constexpr int kRowsPerBlock = 32;  // two m16 tiles of weight rows
constexpr int kLaneWords = 4;      // 16 bytes of codes per weight row, lane and K block

// Each chunk of 8 inputs as 4 bf16 pairs in code-pair order (see the file comment).
template <bool Interleave>
__global__ void activations_kernel(const float4* __restrict__ x, int64_t chunks,
                                   uint4* __restrict__ out) {
  wait_for_prior_kernels();
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < chunks;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float4 a = __ldg(x + 2 * i), b = __ldg(x + 2 * i + 1);
    if constexpr (Interleave)
      out[i] = make_uint4(pack_bf16(a.x, b.x), pack_bf16(a.y, b.y), pack_bf16(a.z, b.z),
                          pack_bf16(a.w, b.w));
    else
      out[i] = make_uint4(pack_bf16(a.x, a.y), pack_bf16(a.z, a.w), pack_bf16(b.x, b.y),
                          pack_bf16(b.z, b.w));
  }
}

__device__ __forceinline__ uint32_t bits_of(__nv_bfloat162 v) {
  return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ __nv_bfloat162 bf16x2_of(uint32_t v) {
  return *reinterpret_cast<const __nv_bfloat162*>(&v);
}

// Code pair p of a word as exact bf16x2 integers. 4-bit: nibbles p and p + 4, built as
// (128 + q) by placing q under the exponent of 128, minus 128. 8-bit: bytes 2p and 2p + 1 via
// f32 (2^23 + q) - 2^23 (bf16 cannot hold 128 + q for q >= 128).
template <int Bits>
__device__ __forceinline__ uint32_t code_pair_bf16(uint32_t word, int p) {
  if constexpr (Bits == 4) {
    const uint32_t biased = ((word >> (4 * p)) & 0x000f000fu) | 0x43004300u;
    return bits_of(__hsub2(bf16x2_of(biased), bf16x2_of(0x43004300u)));
  } else {
    const float lo = __uint_as_float(__byte_perm(word, 0x4b000000u, 0x7440 + 2 * p)) - 8388608.0f;
    const float hi = __uint_as_float(__byte_perm(word, 0x4b000000u, 0x7441 + 2 * p)) - 8388608.0f;
    return pack_bf16(lo, hi);
  }
}

// The scale/bias of one row's group, ready for dequantize_pair.
struct RowScale {
  uint32_t scale2, bias2;  // bf16 scales: (s, s) and (b, b)
  float2 f32;              // f32 scales
};

template <bool F32Scales>
__device__ __forceinline__ RowScale row_scale(ScaleBiasRaw<F32Scales> raw) {
  RowScale r{};
  if constexpr (F32Scales) {
    r.f32 = raw;
  } else {
    r.scale2 = __byte_perm(raw, 0, 0x1010);
    r.bias2 = __byte_perm(raw, 0, 0x3232);
  }
  return r;
}

template <bool F32Scales>
__device__ __forceinline__ uint32_t dequantize_pair(uint32_t codes, const RowScale& s) {
  if constexpr (F32Scales) {
    return pack_bf16(fmaf(s.f32.x, __uint_as_float(codes << 16), s.f32.y),
                     fmaf(s.f32.x, __uint_as_float(codes & 0xffff0000u), s.f32.y));
  } else {
    return bits_of(__hfma2(bf16x2_of(s.scale2), bf16x2_of(codes), bf16x2_of(s.bias2)));
  }
}

__device__ __forceinline__ uint4 load_codes(const uint32_t* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// Codes and scales of one K block for the lane's 4 rows (2 tiles x rows g, g + 8).
template <bool F32Scales>
struct BlockCodes {
  uint32_t words[2][2][kLaneWords];
  ScaleBiasRaw<F32Scales> raw[2][2];
};

// NT tiles of 8 tokens (m <= 8 * NT).
template <int NT, int Bits, bool F32Scales, int kWarps>
__global__ void __launch_bounds__(kWarps* kLanes)
    quant_mma_kernel(const uint2* __restrict__ xb, int m, QuantMatrix w, float* __restrict__ y) {
  constexpr int kPairsPerWord = Bits == 4 ? 4 : 2;
  constexpr int kSteps = kLaneWords * kPairsPerWord / 2;  // mma k16 steps per K block
  constexpr int kLaneInputs = kLaneWords * 32 / Bits;     // E
  constexpr int kBlockInputs = 4 * kLaneInputs;
  constexpr int kTokens = 8 * NT;
  __shared__ float partial[kWarps][kRowsPerBlock][kTokens + 1];  // +1: conflict-free reads

  const int warp = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int g = lane / 4, quad_lane = lane % 4;
  const int row_base = blockIdx.x * kRowsPerBlock;
  const int k = w.cols;
  const int words_per_row = k * Bits / 32;
  const int groups = k / w.group_size;
  const int kblocks = (k + kBlockInputs - 1) / kBlockInputs;
  const uint32_t* codes[2][2];
  const ScaleBiasRaw<F32Scales>* pairs[2][2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = min(row_base + 16 * mt + 8 * h + g, w.rows - 1);
      codes[mt][h] = w.codes + row * words_per_row + kLaneWords * quad_lane;
      pairs[mt][h] = static_cast<const ScaleBiasRaw<F32Scales>*>(w.scale_bias) + row * groups;
    }

  auto load = [&](int kb, BlockCodes<F32Scales>& c) {
    const int in0 = kb * kBlockInputs + kLaneInputs * quad_lane;
    const bool ok = kb < kblocks && in0 < k;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        uint4 v = make_uint4(0, 0, 0, 0);
        c.raw[mt][h] = ScaleBiasRaw<F32Scales>{};
        if (ok) {
          v = load_codes(codes[mt][h] + kb * (kBlockInputs * Bits / 32));
          c.raw[mt][h] = load_scale_bias<F32Scales>(pairs[mt][h], in0 / w.group_size);
        }
        c.words[mt][h][0] = v.x;
        c.words[mt][h][1] = v.y;
        c.words[mt][h][2] = v.z;
        c.words[mt][h][3] = v.w;
      }
  };

  BlockCodes<F32Scales> cur;
  load(warp, cur);  // weights only: may run before the previous kernel finishes
  wait_for_prior_kernels();

  const uint2* xrow[NT];
  bool token_ok[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int token = 8 * j + g;
    token_ok[j] = token < m;
    xrow[j] = xb + static_cast<int64_t>(min(token, m - 1)) * (k / 4);
  }
  float acc[2][NT][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][j][i] = 0.0f;

  for (int kb = warp; kb < kblocks; kb += kWarps) {
    BlockCodes<F32Scales> next;
    load(kb + kWarps, next);
    const int in0 = kb * kBlockInputs + kLaneInputs * quad_lane;
    const bool ok = in0 < k;
    RowScale scale[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) scale[mt][h] = row_scale<F32Scales>(cur.raw[mt][h]);
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      uint32_t a[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const int pair = 2 * s + half;
            a[mt][2 * half + h] = dequantize_pair<F32Scales>(
                code_pair_bf16<Bits>(cur.words[mt][h][pair / kPairsPerWord], pair % kPairsPerWord),
                scale[mt][h]);
          }
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        uint2 b = make_uint2(0, 0);
        if (ok && token_ok[j]) b = __ldg(xrow[j] + (in0 + 4 * s) / 4);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) mma_bf16(acc[mt][j], a[mt], b.x, b.y);
      }
    }
    cur = next;
  }

  // C fragment: acc[.][j][0..1] are row g, tokens 8j + 2t, +1; [2..3] the same for row g + 8.
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i)
        partial[warp][16 * mt + g + 8 * (i / 2)][8 * j + 2 * quad_lane + i % 2] = acc[mt][j][i];
  __syncthreads();
  for (int i = threadIdx.x; i < kRowsPerBlock * m; i += kWarps * kLanes) {
    const int row = i % kRowsPerBlock, token = i / kRowsPerBlock;
    if (row_base + row >= w.rows) continue;
    float sum = 0.0f;
#pragma unroll
    for (int v = 0; v < kWarps; ++v) sum += partial[v][row][token];
    y[static_cast<int64_t>(token) * w.rows + row_base + row] = sum;
  }
}

template <int NT, int Bits, bool F32Scales>
void launch(const uint2* xb, int m, const QuantMatrix& w, float* y, cudaStream_t stream) {
  // 32 KB of partial sums per block either way; more warps split K finer for fewer tokens.
  constexpr int kWarps = NT <= 4 ? 8 : 4;
  const int blocks = (w.rows + kRowsPerBlock - 1) / kRowsPerBlock;
  launch_kernel("quant_mma_kernel", quant_mma_kernel<NT, Bits, F32Scales, kWarps>, blocks,
                kWarps * kLanes, 0, stream, xb, m, w, y);
}

template <int Bits, bool F32Scales>
void launch_tokens(const uint2* xb, int m, const QuantMatrix& w, float* y, cudaStream_t stream) {
  if (m <= 16)
    launch<2, Bits, F32Scales>(xb, m, w, y, stream);
  else if (m <= 32)
    launch<4, Bits, F32Scales>(xb, m, w, y, stream);
  else
    launch<8, Bits, F32Scales>(xb, m, w, y, stream);
}

}  // namespace

void quant_mma(const float* x, int m, const QuantMatrix& w, bf16_bits* x_scratch, float* y,
               cudaStream_t stream) {
  if (w.rows == 0 || m == 0) return;
  MOXIN_CHECK(m <= kQuantMmaMaxRows && w.cols % 64 == 0 &&
                  reinterpret_cast<uintptr_t>(x) % 16 == 0,
              "[cuda] quant_mma: ", m, " rows (1..", kQuantMmaMaxRows, "), in_features ", w.cols,
              " (multiple of 64) and 16-byte aligned activations required");
  const int64_t chunks = int64_t{m} * w.cols / 8;
  auto* out = reinterpret_cast<uint4*>(x_scratch);
  const auto* x4 = reinterpret_cast<const float4*>(x);
  if (w.bits == 4)
    launch_kernel("activations_kernel", activations_kernel<true>, elementwise_blocks(chunks),
                  kElementwiseThreads, 0, stream, x4, chunks, out);
  else
    launch_kernel("activations_kernel", activations_kernel<false>, elementwise_blocks(chunks),
                  kElementwiseThreads, 0, stream, x4, chunks, out);
  const auto* xb = reinterpret_cast<const uint2*>(x_scratch);
  if (w.bits == 4)
    w.f32_scales ? launch_tokens<4, true>(xb, m, w, y, stream)
                 : launch_tokens<4, false>(xb, m, w, y, stream);
  else
    w.f32_scales ? launch_tokens<8, true>(xb, m, w, y, stream)
                 : launch_tokens<8, false>(xb, m, w, y, stream);
}

}  // namespace moxin::cuda
