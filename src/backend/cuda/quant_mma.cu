// Batched-decode linear with quantized weights (3 <= M <= 64; MLX affine 4/8-bit, and FP8 E4M3
// through fp8_mma): y[M, N] = x[M, K] W^T with mma.sync m16n8k16 (bf16 in, f32 accumulation).
// Weights are the A operand (16 rows per tile), activations the B operand (8 tokens per tile),
// so the weights are read once per call for up to 64 tokens and dequantized straight into A
// fragments, never to memory.
//
// The sum over k does not care in which order k comes, so each lane takes its A fragment from
// 16 contiguous bytes of codes per row (one group, one scale/bias pair) and the activations are
// stored in the order the code pairs come out of a word (4-bit: x0 x4 x1 x5 x2 x6 x3 x7 per
// chunk of 8, see code_pair_bf16; 8-bit: natural order). Lane t of a quad then owns inputs
// [t * E, (t + 1) * E) of every K block of 4 * E inputs (E = 32 for 4-bit, 16 for 8-bit); mma
// step s takes its pairs 2s and 2s + 1, i.e. 4 consecutive reordered activations per token, and
// one 16-byte load serves two steps (layout in activations_kernel).
//
// A warp multiplies 32 weight rows (two m16 tiles); a block is kWarps / kPhases such row groups,
// the kPhases warps of a group taking alternate K blocks (a row's neighbouring pieces read
// together). The block's warps walk the same few K blocks at a time, so its activation tiles are
// prefetched from L2 once and then served from L1 to every warp (with 32 rows per block the
// activations would cost L2 4x the weight bytes at 32 tokens). The K blocks are also dealt to
// gridDim.y blocks so that even 4096 rows fill the GPU; all partial sums meet in y by atomic adds
// (y zeroed by the activation kernel), so the order of those f32 additions varies from run to
// run. Each warp loads its next K block's codes while it multiplies the current one.
// Dequantization: bf16 scales use the bf16x2 FMA (one rounding of
// scale * q + bias); f32 scales an f32 FMA then a bf16 rounding, as quant_dequantize_bf16. Both
// give the bf16 nearest to the f32 value scale * q + bias except when that f32 value itself was
// rounded onto a bf16 tie (not seen in practice).
#include <cuda_bf16.h>

#include <algorithm>

#include "backend/cuda/attention_mma.cuh"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/e4m3.cuh"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/quant_gemv_sweep.hpp"
#include "backend/cuda/streaming_load.cuh"
#include "backend/cuda/quant_format.cuh"

namespace moxin::cuda {
namespace {

constexpr int kLanes = 32;
constexpr int kRowsPerWarp = 32;  // two m16 tiles of weight rows
constexpr int kLaneWords = 4;     // 16 bytes of codes per weight row, lane and K block

// Inputs per K block: 16 bytes of codes per weight row for each of the 4 lanes of a quad.
template <int Bits>
constexpr int block_inputs() {
  return 4 * kLaneWords * 32 / Bits;
}

// Activations rounded to bf16 in the order the kernel's B fragments want them. Within a chunk of
// 8 inputs: code-pair order (see the file comment). Within each K block of a token row: the
// 16-byte chunks that lane t of a quad multiplies in mma steps 2p and 2p + 1 stored at unit
// 4p + t, so one 16-byte load per lane fetches two steps and a quad reads 64 contiguous bytes.
// Rows are padded to whole K blocks. Zeroes y when the K split adds into it.
template <int Bits>
__global__ void activations_kernel(const float4* __restrict__ x, int m, int k,
                                   uint4* __restrict__ out, float* __restrict__ zero_y,
                                   int64_t y_count) {
  constexpr int kUnits = block_inputs<Bits>() / 8;  // 16-byte units per K block and row
  constexpr int kLaneUnits = kUnits / 4;
  wait_for_prior_kernels();
  const int64_t first = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int chunks_per_row = k / 8;
  const int64_t row_units = int64_t{(k + 8 * kUnits - 1) / (8 * kUnits)} * kUnits;
  for (int64_t i = first; i < int64_t{m} * chunks_per_row; i += stride) {
    const int64_t token = i / chunks_per_row;
    const int c = static_cast<int>(i % chunks_per_row);
    const int unit = c % kUnits;
    const int64_t dest =
        token * row_units + (c - unit) + (unit % kLaneUnits) * 4 + unit / kLaneUnits;
    const float4 a = __ldg(x + 2 * i), b = __ldg(x + 2 * i + 1);
    if constexpr (Bits == 4)
      out[dest] = make_uint4(pack_bf16(a.x, b.x), pack_bf16(a.y, b.y), pack_bf16(a.z, b.z),
                             pack_bf16(a.w, b.w));
    else
      out[dest] = make_uint4(pack_bf16(a.x, a.y), pack_bf16(a.z, a.w), pack_bf16(b.x, b.y),
                             pack_bf16(b.z, b.w));
  }
  if (zero_y)
    for (int64_t i = first; i < y_count; i += stride) zero_y[i] = 0.0f;
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
    // One LOP3 for (q & mask) | 128 (nvcc emitted an AND and an OR, each with its immediate).
    uint32_t biased;
    asm("lop3.b32 %0, %1, 0x000f000f, 0x43004300, 0xea;" : "=r"(biased) : "r"(word >> (4 * p)));
    return bits_of(__hsub2(bf16x2_of(biased), bf16x2_of(0x43004300u)));
  } else {
    const float lo = __uint_as_float(__byte_perm(word, 0x4b000000u, 0x7440 + 2 * p)) - 8388608.0f;
    const float hi = __uint_as_float(__byte_perm(word, 0x4b000000u, 0x7441 + 2 * p)) - 8388608.0f;
    return pack_bf16(lo, hi);
  }
}

// Code pair p (bytes 2p and 2p + 1) of a word of E4M3 codes as bf16x2: exact, every E4M3 value is
// a bf16 value.
__device__ __forceinline__ uint32_t e4m3_pair_bf16(uint32_t word, int p) {
  const float2 v = e4m3x2_to_float2(word >> (16 * p));
  return pack_bf16(v.x, v.y);
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

// Codes and scales of one K block for the lane's 4 rows (2 tiles x rows g, g + 8).
template <bool F32Scales>
struct BlockCodes {
  uint32_t words[2][2][kLaneWords];
  ScaleBiasRaw<F32Scales> raw[2][2];
};

// NT tiles of 8 tokens (m <= 8 * NT). Block (x, y): rows [x * R, +R) with R = kWarps / kPhases
// * 32; warp w takes row group w / kPhases and K blocks (y * kPhases + w % kPhases) + i * gridDim.y
// * kPhases (each block's K blocks in runs instead, 8-bit lost 3-10% and 4-bit tied: H100,
// session 27). With a split or phases the partial sums meet in y by atomic adds.
// Two blocks per SM, as plan_for plans (H100 run 3: at 140 registers one block fit and the
// grid ran in two waves).
// kE4M3: w is an FP8 matrix seen as 8-bit codes (fp8_mma): each code pair widened exactly, no
// group scales; the row's scale multiplies the sums.
template <int NT, int Bits, bool F32Scales, int kWarps, int kPhases, bool kE4M3>
__global__ void __launch_bounds__(kWarps* kLanes, 2)
    quant_mma_kernel(const uint4* __restrict__ xb, int m, QuantMatrix w, float* __restrict__ y) {
  static_assert(kWarps % kPhases == 0, "whole row groups per block");
  static_assert(!kE4M3 || (Bits == 8 && !F32Scales), "E4M3 codes are bytes with one f32 scale a row");
  constexpr int kPairsPerWord = Bits == 4 ? 4 : 2;
  constexpr int kSteps = kLaneWords * kPairsPerWord / 2;  // mma k16 steps per K block
  constexpr int kLaneInputs = kLaneWords * 32 / Bits;     // E
  constexpr int kBlockInputs = block_inputs<Bits>();
  constexpr int kUnits = kBlockInputs / 8;  // 16-byte units of activations per K block and row
  constexpr int kBlockWords = kBlockInputs * Bits / 32;  // code words per row and K block
  using Raw = ScaleBiasRaw<F32Scales>;

  const int warp = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int g = lane / 4, quad_lane = lane % 4;
  const int phase = warp % kPhases;
  const int row_base = (blockIdx.x * (kWarps / kPhases) + warp / kPhases) * kRowsPerWarp;
  const int k = w.cols;
  const int words_per_row = k * Bits / 32;
  const int groups = k / w.group_size;
  const int group_shift = __ffs(w.group_size) - 1;  // group sizes are powers of two
  const int kblocks = (k + kBlockInputs - 1) / kBlockInputs;
  const int kb_first = blockIdx.y * kPhases + phase;
  const int kb_stride = gridDim.y * kPhases;
  const uint32_t* codes[2][2];
  const Raw* pairs[2][2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = min(row_base + 16 * mt + 8 * h + g, w.rows - 1);
      codes[mt][h] = w.codes + row * words_per_row + kLaneWords * quad_lane;
      pairs[mt][h] = static_cast<const Raw*>(w.scale_bias) + row * groups;
    }

  // One branch for the four rows and a shift for the group (an integer division per row and K
  // block, with a branch per row, was half of the loop's instructions).
  auto load = [&](int kb, BlockCodes<F32Scales>& c) {
    const int in0 = kb * kBlockInputs + kLaneInputs * quad_lane;
    if (kb < kblocks && in0 < k) {
      const int group = in0 >> group_shift;
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint4 v = load_once_16(codes[mt][h] + kb * kBlockWords);
          c.words[mt][h][0] = v.x;
          c.words[mt][h][1] = v.y;
          c.words[mt][h][2] = v.z;
          c.words[mt][h][3] = v.w;
          c.raw[mt][h] = kE4M3 ? Raw{} : load_scale_bias<F32Scales>(pairs[mt][h], group);
        }
    } else {
      c = BlockCodes<F32Scales>{};  // zero weights: a scale and bias of 0
    }
  };

  // The activation tile of K block kb (m rows of kBlockInputs bf16, 1 or 2 lines each) is
  // pulled into L1 one K block ahead, spread over the block's threads: the mma steps then wait
  // on L1, not on a chain of L2 round trips.
  const int64_t row_units = int64_t{kblocks} * kUnits;
  constexpr int kLinesPerRow = kUnits * 16 / 128;
  // The block's phases take K blocks kb0 .. kb0 + kPhases - 1 together.
  auto prefetch_activations = [&](int kb0) {
    const int lines = m * kLinesPerRow;
    for (int i = threadIdx.x; i < kPhases * lines; i += blockDim.x) {
      const int kb = kb0 + i / lines, line = i % lines;
      if (kb >= kblocks) return;
      const uint4* p = xb + (line / kLinesPerRow) * row_units + kb * kUnits + (line % kLinesPerRow) * 8;
      asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
    }
  };

  BlockCodes<F32Scales> cur;
  load(kb_first, cur);  // weights only: may run before the previous kernel finishes
  wait_for_prior_kernels();
  prefetch_activations(kb_first - phase);

  const uint4* xrow[NT];
  bool token_ok[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int token = 8 * j + g;
    token_ok[j] = token < m;
    xrow[j] = xb + min(token, m - 1) * row_units + quad_lane;
  }
  float acc[2][NT][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][j][i] = 0.0f;

  for (int kb = kb_first; kb < kblocks; kb += kb_stride) {
    BlockCodes<F32Scales> next;
    load(kb + kb_stride, next);
    prefetch_activations(kb - phase + kb_stride);
    const bool ok = kb * kBlockInputs + kLaneInputs * quad_lane < k;
    RowScale scale[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) scale[mt][h] = row_scale<F32Scales>(cur.raw[mt][h]);
    uint4 b[NT];  // B fragments of steps s and s + 1: one 16-byte load per token tile
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      if (s % 2 == 0) {
#pragma unroll
        for (int j = 0; j < NT; ++j)
          b[j] = ok && token_ok[j] ? __ldg(xrow[j] + kb * kUnits + s / 2 * 4) : make_uint4(0, 0, 0, 0);
      }
      uint32_t a[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const int pair = 2 * s + half;
            const uint32_t word = cur.words[mt][h][pair / kPairsPerWord];
            a[mt][2 * half + h] =
                kE4M3 ? e4m3_pair_bf16(word, pair % kPairsPerWord)
                      : dequantize_pair<F32Scales>(code_pair_bf16<Bits>(word, pair % kPairsPerWord), scale[mt][h]);
          }
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
          mma_bf16(acc[mt][j], a[mt], s % 2 ? b[j].z : b[j].x, s % 2 ? b[j].w : b[j].y);
    }
    cur = next;
  }

  // C fragment: acc[.][j][0..1] are row g, tokens 8j + 2t, +1; [2..3] the same for row g + 8.
  const bool split = gridDim.y > 1 || kPhases > 1;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = row_base + 16 * mt + g + 8 * (i / 2);
        const int token = 8 * j + 2 * quad_lane + i % 2;
        if (row >= w.rows || token >= m) continue;
        float* out = y + static_cast<int64_t>(token) * w.rows + row;
        const float sum = kE4M3 ? acc[mt][j][i] * static_cast<const float*>(w.scale_bias)[row] : acc[mt][j][i];
        if (split)
          atomicAdd(out, sum);
        else
          *out = sum;
      }
}

// Warps per block: 8 (two blocks of 128-register threads per SM) up to 32 tokens, 4 above.
constexpr int warps_for(int nt) { return nt <= 4 ? 8 : 4; }

// The engine's K phases: warps of a block that share rows and take successive K blocks, so that a
// row's neighbouring 64-byte pieces are read together. Two against one, H100 session 27: 8-bit
// 7-19% faster at M <= 16, 4-bit 2-9%, M = 32 within 4%; four or eight were no better.
constexpr int kPhases = 2;

// One launch's shape: token tiles, K phases per block, K split.
struct Plan {
  int nt = 1, phases = kPhases, split = 1;
};

// The split: as many blocks per row range as fit one wave of two blocks per SM (H100 run 2:
// rounding up to a second, nearly empty wave doubled the time).
Plan plan_for(const QuantMatrix& w, int nt, int phases) {
  const int rows_per_block = warps_for(nt) / phases * kRowsPerWarp;
  const int row_blocks = (w.rows + rows_per_block - 1) / rows_per_block;
  const int block_inputs = 4 * kLaneWords * 32 / w.bits;
  const int kblocks = (w.cols + block_inputs - 1) / block_inputs;
  const int fits = 2 * multiprocessors() / row_blocks;
  return {nt, phases, std::max(1, std::min({fits, (kblocks + phases - 1) / phases, 32}))};
}

template <int NT, int Bits, bool F32Scales, int Phases, bool E4M3>
void launch(const uint4* xb, int m, const QuantMatrix& w, const Plan& plan, float* y, cudaStream_t stream) {
  constexpr int kWarps = warps_for(NT);
  constexpr int kRowsPerBlock = kWarps / Phases * kRowsPerWarp;
  launch_kernel("quant_mma_kernel", quant_mma_kernel<NT, Bits, F32Scales, kWarps, Phases, E4M3>,
                dim3((w.rows + kRowsPerBlock - 1) / kRowsPerBlock, plan.split), kWarps * kLanes, 0, stream,
                xb, m, w, y);
}

// Tiles of 8 tokens: one up to 8 tokens (two cost 3-13% more at M = 4 and 8, H100 session 27),
// 2 up to 16, then 4 and 8.
int token_tiles(int m) { return m <= 8 ? 1 : m <= 16 ? 2 : m <= 32 ? 4 : 8; }

// The benchmark's other phasings take bf16 scales only (fewer kernels to compile).
template <int Bits, bool F32Scales, int Phases, bool E4M3 = false>
void launch_tokens(const uint4* xb, int m, const QuantMatrix& w, const Plan& plan, float* y,
                   cudaStream_t stream) {
  switch (plan.nt) {
    case 1: return launch<1, Bits, F32Scales, Phases, E4M3>(xb, m, w, plan, y, stream);
    case 2: return launch<2, Bits, F32Scales, Phases, E4M3>(xb, m, w, plan, y, stream);
    case 4: return launch<4, Bits, F32Scales, Phases, E4M3>(xb, m, w, plan, y, stream);
    default: return launch<8, Bits, F32Scales, Phases, E4M3>(xb, m, w, plan, y, stream);
  }
}

template <int Bits>
void launch_bits(const uint4* xb, int m, const QuantMatrix& w, const Plan& plan, float* y, cudaStream_t stream) {
  if (w.f32_scales) return launch_tokens<Bits, true, kPhases>(xb, m, w, plan, y, stream);
  switch (plan.phases) {
    case 1: return launch_tokens<Bits, false, 1>(xb, m, w, plan, y, stream);
    case 4: return launch_tokens<Bits, false, 4>(xb, m, w, plan, y, stream);
    default: return launch_tokens<Bits, false, kPhases>(xb, m, w, plan, y, stream);
  }
}

// x rounded to bf16 in the kernel's order into x_scratch; y zeroed where the K split adds into it.
void prepare_activations(const float* x, int m, const QuantMatrix& w, bool zero, bf16_bits* x_scratch,
                         float* y, cudaStream_t stream) {
  MOXIN_CHECK(m <= kQuantMmaMaxRows && w.cols % 64 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0,
              "[cuda] quant_mma: ", m, " rows (1..", kQuantMmaMaxRows, "), in_features ", w.cols,
              " (multiple of 64) and 16-byte aligned activations required");
  auto* out = reinterpret_cast<uint4*>(x_scratch);
  const auto* x4 = reinterpret_cast<const float4*>(x);
  const int64_t y_count = int64_t{m} * w.rows;
  const unsigned blocks = elementwise_blocks(std::max(int64_t{m} * w.cols / 8, y_count));
  launch_kernel("activations_kernel", w.bits == 4 ? activations_kernel<4> : activations_kernel<8>,
                blocks, kElementwiseThreads, 0, stream, x4, m, w.cols, out, zero ? y : nullptr, y_count);
}

void run(const float* x, int m, const QuantMatrix& w, const Plan& plan, bf16_bits* x_scratch, float* y,
         cudaStream_t stream) {
  prepare_activations(x, m, w, plan.split > 1 || plan.phases > 1, x_scratch, y, stream);
  const auto* xb = reinterpret_cast<const uint4*>(x_scratch);
  w.bits == 4 ? launch_bits<4>(xb, m, w, plan, y, stream) : launch_bits<8>(xb, m, w, plan, y, stream);
}

}  // namespace

void quant_mma(const float* x, int m, const QuantMatrix& w, bf16_bits* x_scratch, float* y,
               cudaStream_t stream) {
  if (w.rows == 0 || m == 0) return;
  run(x, m, w, plan_for(w, token_tiles(m), kPhases), x_scratch, y, stream);
}

void fp8_mma(const float* x, int m, const Fp8Matrix& w, bf16_bits* x_scratch, float* y, cudaStream_t stream) {
  if (w.rows == 0 || m == 0) return;
  MOXIN_CHECK(reinterpret_cast<uintptr_t>(w.codes) % 16 == 0, "[cuda] fp8_mma: codes must be 16-byte aligned");
  // The codes as 8-bit words, one "group" a row; scale_bias carries the row scales.
  const QuantMatrix codes{reinterpret_cast<const uint32_t*>(w.codes), w.scales, false, 8, w.cols, w.rows, w.cols};
  const Plan plan = plan_for(codes, token_tiles(m), kPhases);
  prepare_activations(x, m, codes, plan.split > 1 || plan.phases > 1, x_scratch, y, stream);
  launch_tokens<8, false, kPhases, true>(reinterpret_cast<const uint4*>(x_scratch), m, codes, plan, y, stream);
}

bool quant_mma_variant(int token_tiles_wanted, int phases, const float* x, int m, const QuantMatrix& w,
                       bf16_bits* x_scratch, float* y, cudaStream_t stream) {
  const bool tiles_ok = token_tiles_wanted == 1 || token_tiles_wanted == 2 || token_tiles_wanted == 4 ||
                        token_tiles_wanted == 8;
  const bool phases_ok = phases == kPhases || (!w.f32_scales && (phases == 1 || phases == 4));
  if (!tiles_ok || !phases_ok || 8 * token_tiles_wanted < m || w.rows == 0 || m == 0) return false;
  run(x, m, w, plan_for(w, token_tiles_wanted, phases), x_scratch, y, stream);
  return true;
}

}  // namespace moxin::cuda
