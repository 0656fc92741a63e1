// Decode-time linear with quantized weights: y[M, N] = x[M, K] W^T for M <= 2, W held as MLX
// affine codes (w = scale * q + bias per group of 32, 64 or 128 inputs), f32 activations.
//
// Memory-bound like the bf16 GEMV (gemv.cu), but a byte of codes carries 1 or 2 weights, so
// the arithmetic per byte is 2-4x higher and instruction count decides whether the kernel
// keeps up with DRAM. Per output and group it computes scale * dot(q, x) + bias * sum(x):
// no per-weight dequantization, and sum(x) is formed once per chunk for all rows of a warp.
//
// Two kernels: the lane-per-word one described here (8-bit, and 4-bit when x does not fit in
// shared memory) and, further down, the 4-bit kernel that stages x in shared memory first.
//
// Work layout: a warp owns R consecutive rows (and 1/S of K, see quant_gemv_kernel). K is cut
// into chunks of 8 inputs (one 32-bit word of 4-bit codes, two of 8-bit codes); lane L takes
// chunks L, L + 32, L + 64, ... so a warp's activation loads of one chunk index cover one
// contiguous 1 KB span (two float4 per lane), and every chunk lies in one group (8 divides the
// group size). Each lane loads x for a chunk once and applies it to its R rows; a warp
// iteration covers 16 bytes of codes per row and lane, and the next iteration's codes are
// requested before the current ones are used.
//
// Codes become floats without conversion instructions: a code masked in place inside its word
// (bit offset s < 23), read as an f32, is the subnormal q * 2^(s - 149) exactly. Multiplied by
// x * 2^(kXExp - s) it gives q * x * 2^(kXExp - 149) in one FMA; fma.rn.f32 (no .ftz) takes
// subnormal inputs at full rate on the FMA pipe. A code then costs one logic op plus one FMA
// per activation row, instead of extract, convert and subtract. With kXExp = 80 the products
// stay normal floats for |q x| > 2^-57 (below, the absolute error is < 2^-80), x * 2^80 is
// finite for |x| < 2^48, and the sum is scaled back exactly by a power of two.
#include <type_traits>

#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/pow2.cuh"
#include "backend/cuda/streaming_load.cuh"
#include "backend/cuda/swiglu.cuh"
#include "backend/cuda/warp_reduce.cuh"
#include "backend/cuda/quant_format.cuh"
#include "backend/cuda/quant_gemv_sweep.hpp"

namespace moxin::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kLanes = 32;
constexpr int kChunk = 8;   // inputs per chunk
constexpr int kXExp = 80;   // x is scaled by 2^(kXExp - s); products carry 2^(kXExp - 149)
constexpr int kProductExp = kXExp - 149;

// Bit offset inside the extracted word of chunk element e's code (see extract_codes).
template <int Bits>
__host__ __device__ constexpr int code_offset(int e) {
  if constexpr (Bits == 4)
    return e <= 4 ? 4 * e : 4 * (e - 3);
  else
    return e % 2 == 0 ? 0 : 8;
}

// The 8 codes of a chunk as subnormal floats q * 2^(code_offset(e) - 149). 4-bit: nibbles 0..4
// are masked in place, nibbles 5..7 after a 12-bit shift (so none touches the exponent field,
// bit 23). 8-bit: bytes 0 and 1 in place, bytes 2 and 3 moved down to offsets 0 and 8.
template <int Bits>
__device__ __forceinline__ void extract_codes(const uint32_t (&words)[Bits / 4], float (&v)[8]) {
  if constexpr (Bits == 4) {
    const uint32_t lo = words[0], hi = words[0] >> 12;
    v[0] = __uint_as_float(lo & 0xfu);
    v[1] = __uint_as_float(lo & 0xf0u);
    v[2] = __uint_as_float(lo & 0xf00u);
    v[3] = __uint_as_float(lo & 0xf000u);
    v[4] = __uint_as_float(lo & 0xf0000u);
    v[5] = __uint_as_float(hi & 0xf00u);
    v[6] = __uint_as_float(hi & 0xf000u);
    v[7] = __uint_as_float(hi & 0xf0000u);
  } else {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      v[4 * i] = __uint_as_float(words[i] & 0xffu);
      v[4 * i + 1] = __uint_as_float(words[i] & 0xff00u);
      v[4 * i + 2] = __uint_as_float(__byte_perm(words[i], 0, 0x4442));  // byte 2 -> bits 0..7
      v[4 * i + 3] = __uint_as_float(__byte_perm(words[i], 0, 0x4434));  // byte 3 -> bits 8..15
    }
  }
}

// fma.rn.f32 spelled out: no flush-to-zero whatever the compiler flags, the subnormal codes
// above must survive.
__device__ __forceinline__ float fma_subnormal(float a, float b, float c) {
  float d;
  asm("fma.rn.f32 %0, %1, %2, %3;" : "=f"(d) : "f"(a), "f"(b), "f"(c));
  return d;
}

// y for a warp's R rows: each lane's scale * dot * 2^kProductExp + bias * sum(x) parts summed
// over the warp and, with K split over S warps, over the S warps of the row group (shared
// memory, fixed order). Every thread of the block must call it (it synchronizes when S > 1).
// Gated: the R rows are R / 2 (gate, up) pairs and y gets silu(gate) * up for outputs row0 ..
// (rows: outputs), as swiglu_kernel computes it from the gate | up row.
template <int M, int R, int S, int Warps, bool Gated = false>
__device__ __forceinline__ void write_outputs(const float (&acc_q)[M][R], const float (&acc_b)[M][R],
                                              float (&partial)[S > 1 ? Warps : 1][M][R], int lane,
                                              int warp, int row0, int rows, float* y) {
  float out[M][R];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r)
      out[m][r] = warp_sum(fmaf(acc_q[m][r], pow2(-kProductExp), acc_b[m][r]));
  if constexpr (S > 1) {
    if (lane == 0)
#pragma unroll
      for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) partial[warp][m][r] = out[m][r];
    __syncthreads();
    if (warp % S != 0) return;
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int i = 1; i < S; ++i) out[m][r] += partial[warp + i][m][r];
  }
  if (lane == 0 && row0 < rows) {
    constexpr int kOutputs = Gated ? R / 2 : R;
#pragma unroll
    for (int o = 0; o < kOutputs; ++o) {
      if (row0 + o >= rows) break;
#pragma unroll
      for (int m = 0; m < M; ++m)
        y[static_cast<int64_t>(m) * rows + row0 + o] = Gated ? silu_times(out[m][2 * o], out[m][2 * o + 1]) : out[m][o];
    }
  }
}

// The codes and scale/bias pairs of one warp iteration: kSteps chunks of R rows per lane.
template <int R, int Bits, bool F32Scales>
struct IterationCodes {
  static constexpr int kWords = Bits / 4;  // code words per chunk
  static constexpr int kSteps = 4 / kWords;  // chunks per lane and row: 16 bytes of codes
  uint32_t word[R][kSteps][kWords];
  ScaleBiasRaw<F32Scales> raw[R][kSteps];
};

// A block is kWarpsPerBlock warps: kWarpsPerBlock / S groups of R rows, each group's K split
// over S warps (warp iteration i goes to warp i % S), partial sums added in a fixed order.
// Each warp loads its next iteration's codes before it computes the current one.
// Requires K % 64 == 0 and 16-byte aligned x (checked by the launcher).
// Gated: w is gate | up ([2 n, K]), a warp's R rows are R / 2 (gate j, up n + j) pairs and y [M, n]
// gets silu(gate) * up, with the bits of the plain kernel followed by swiglu (as the staged one).
template <int M, int R, int S, int Bits, bool F32Scales, int MinBlocks, bool Gated = false>
__global__ void __launch_bounds__(kWarpsPerBlock* kLanes, MinBlocks)
    quant_gemv_kernel(const float* __restrict__ x, QuantMatrix w, float* __restrict__ y) {
  static_assert(!Gated || R % 2 == 0, "gated rows come in gate/up pairs");
  using Codes = IterationCodes<R, Bits, F32Scales>;
  constexpr int kWords = Codes::kWords, kSteps = Codes::kSteps;
  constexpr int kSpan = kSteps * kLanes;  // chunks per warp iteration
  using Raw = ScaleBiasRaw<F32Scales>;
  __shared__ float partial[S > 1 ? kWarpsPerBlock : 1][M][R];
  const int lane = threadIdx.x % kLanes, warp = threadIdx.x / kLanes;
  const int slice = warp % S;
  const int outputs = Gated ? w.rows / 2 : w.rows;
  const int row0 = (blockIdx.x * (kWarpsPerBlock / S) + warp / S) * (Gated ? R / 2 : R);  // first output
  const int k = w.cols;
  const int chunks = row0 < outputs ? k / kChunk : 0;  // a warp past the last row idles
  const int groups = k / w.group_size;
  const int group_shift = __ffs(w.group_size) - __ffs(kChunk);  // chunk index -> group index (powers of 2)
  const uint32_t* codes[R];
  const Raw* pairs[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int output = min(row0 + (Gated ? r / 2 : r), outputs - 1);
    const int64_t row = Gated && r % 2 ? outputs + output : output;
    codes[r] = w.codes + row * (k / kChunk) * kWords;
    pairs[r] = static_cast<const Raw*>(w.scale_bias) + row * groups;
  }
  auto load = [&](int c0, Codes& next) {
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const int c = c0 + lane + s * kLanes;
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int i = 0; i < kWords; ++i) next.word[r][s][i] = 0;
        next.raw[r][s] = Raw{};
        if (c < chunks) {
          if constexpr (kWords == 1) {
            next.word[r][s][0] = load_once_4(codes[r] + c);
          } else {
            const uint2 v = load_once_8(codes[r] + 2 * c);
            next.word[r][s][0] = v.x;
            next.word[r][s][1] = v.y;
          }
          next.raw[r][s] = load_scale_bias<F32Scales>(pairs[r], c >> group_shift);
        }
      }
    }
  };
  // The weights never depend on earlier kernels: the first ones are requested while the
  // previous kernel (which produces x) drains.
  Codes cur;
  load(slice * kSpan, cur);
  wait_for_prior_kernels();

  float acc_q[M][R], acc_b[M][R];  // sum of scale * dot * 2^kProductExp, sum of bias * sum(x)
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) acc_q[m][r] = acc_b[m][r] = 0.0f;

  for (int c0 = slice * kSpan; c0 < chunks; c0 += S * kSpan) {
    Codes next;
    load(c0 + S * kSpan, next);
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const int c = c0 + lane + s * kLanes;
      if (c >= chunks) break;
      float xs[M][kChunk], xsum[M];
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const float4* x4 = reinterpret_cast<const float4*>(x + static_cast<int64_t>(m) * k) + 2 * c;
        const float4 a = __ldg(x4), b = __ldg(x4 + 1);
        const float v[kChunk] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
        xsum[m] = ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
#pragma unroll
        for (int e = 0; e < kChunk; ++e) xs[m][e] = v[e] * pow2(kXExp - code_offset<Bits>(e));
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float q[kChunk];
        extract_codes<Bits>(cur.word[r][s], q);
        const float2 sb = unpack_scale_bias(cur.raw[r][s]);
#pragma unroll
        for (int m = 0; m < M; ++m) {
          float even = 0.0f, odd = 0.0f;
#pragma unroll
          for (int e = 0; e < kChunk; e += 2) {
            even = fma_subnormal(q[e], xs[m][e], even);
            odd = fma_subnormal(q[e + 1], xs[m][e + 1], odd);
          }
          acc_q[m][r] = fmaf(sb.x, even + odd, acc_q[m][r]);
          acc_b[m][r] = fmaf(sb.y, xsum[m], acc_b[m][r]);
        }
      }
    }
    cur = next;
  }
  allow_dependents();

  write_outputs<M, R, S, kWarpsPerBlock, Gated>(acc_q, acc_b, partial, lane, warp, row0, outputs, y);
}

// MinBlocks: blocks per SM the register allocation must allow (1: no constraint).
template <int M, int R, int S, int Bits, bool F32Scales, int MinBlocks = 1, bool Gated = false>
void launch(const float* x, const QuantMatrix& w, float* y, cudaStream_t stream) {
  const int outputs_per_block = kWarpsPerBlock / S * (Gated ? R / 2 : R);
  const int outputs = Gated ? w.rows / 2 : w.rows;
  const int blocks = (outputs + outputs_per_block - 1) / outputs_per_block;
  launch_kernel_prefetching(Gated ? "quant_gemv_kernel (swiglu)" : "quant_gemv_kernel",
                            quant_gemv_kernel<M, R, S, Bits, F32Scales, MinBlocks, Gated>, blocks,
                            kWarpsPerBlock * kLanes, 0, stream, x, w, y);
}

// Tiling by shape, from the H100 sweeps (runs 5-7, share of the copy ceiling, 4-bit / 8-bit).
// M = 1: many rows stream best with 4 rows per warp ([32064x4096] 76% / 98%), mid-size with 2
// ([14336x4096] 66% / 92%; 4 rows: 64% / 90%); with few rows K is split over 2 warps and the
// registers capped for 8 blocks per SM so that enough loads are in flight ([4096x14336] 62% /
// 92%; unsplit 39-44% / 72-74%). M = 2: 4 rows per warp, K split below 8192 rows (48-56% /
// 61-92%; 2 rows capped at 64 registers fell to 25-32%).
// Gated (M = 1): gate | up pairs in the rows the plain kernel would take (w.rows counts both).
template <int M, int Bits, bool F32Scales, bool Gated = false>
void launch_default(const float* x, const QuantMatrix& w, float* y, cudaStream_t stream) {
  static_assert(!Gated || M == 1, "the gated GEMV takes one activation row");
  if constexpr (M == 1) {
    if (w.rows >= 16384)
      launch<1, 4, 1, Bits, F32Scales, 1, Gated>(x, w, y, stream);
    else if (w.rows >= 8192)
      launch<1, 2, 1, Bits, F32Scales, 1, Gated>(x, w, y, stream);
    else
      launch<1, 2, 2, Bits, F32Scales, 8, Gated>(x, w, y, stream);
  } else {
    if (w.rows >= 8192)
      launch<M, 4, 1, Bits, F32Scales>(x, w, y, stream);
    else
      launch<M, 4, 2, Bits, F32Scales>(x, w, y, stream);
  }
}

// ---- 4-bit: activations staged in shared memory, one 16-byte code load per row and lane ----
// At 4 bits a lane-per-word iteration (above) spends as many instructions on loads, scale
// handling and x scaling as on the codes themselves. Here each block first writes x, scaled by
// 2^(kXExp - code_offset) per position, into shared memory together with the sum of every 8
// inputs; lane L of a warp iteration then takes the 32 inputs of segment L (one 16-byte load
// per row, one group, one scale/bias pair), so the per-code work is one logic op and one FMA
// per activation row, and scale and bias are applied once per 32 codes.
// Shared memory per activation row: 9 float4 slots per segment, 8 of scaled x and one of the
// four 8-input sums. The stride of 9 slots (144 bytes) lets the 8 lanes of each quarter-warp
// phase read distinct banks, both in the main loop and when staging; segments are padded with
// zeros to whole warp iterations (their codes multiply zeros).
constexpr int kStagedWarps = 8;
constexpr int kStagedThreads = kStagedWarps * kLanes;
constexpr int kSegment = 32;                // inputs per lane and row in a warp iteration
constexpr int kTile = kSegment * kLanes;    // inputs per warp iteration
constexpr int kSlots = kSegment / 4 + 1;    // float4 slots per staged segment
// The 227 KB a block may opt into, less room for the static partial sums.
constexpr size_t kStagedMaxSmem = 226 * 1024;

size_t staged_smem_bytes(int m, int k) {
  const size_t segments = static_cast<size_t>((k + kTile - 1) / kTile) * kLanes;
  return static_cast<size_t>(m) * segments * kSlots * sizeof(float4);
}

// One warp iteration's codes (4 words per row) and scale/bias pairs.
template <int R, bool F32Scales>
struct SegmentCodes {
  uint4 words[R];
  ScaleBiasRaw<F32Scales> raw[R];
};

// A block is kStagedWarps warps: kStagedWarps / S groups of R rows, K split over S warps as in
// quant_gemv_kernel. Requires K % 64 == 0, 16-byte aligned x and codes (checked by the caller).
// Gated: w is gate | up ([2 n, K]); a warp's R rows are R / 2 pairs (gate row j, up row n + j)
// and y [M, n] gets silu(gate) * up: each row's sums run as in the plain kernel, so the bits are
// those of the GEMV followed by swiglu.
template <int M, int R, int S, bool F32Scales, bool Gated = false>
__global__ void __launch_bounds__(kStagedThreads)
    quant_gemv4_staged_kernel(const float* __restrict__ x, QuantMatrix w, float* __restrict__ y) {
  static_assert(!Gated || R % 2 == 0, "gated rows come in gate/up pairs");
  using Raw = ScaleBiasRaw<F32Scales>;
  using Codes = SegmentCodes<R, F32Scales>;
  extern __shared__ float4 staged[];  // [M][padded segments][kSlots]
  __shared__ float partial[S > 1 ? kStagedWarps : 1][M][R];
  const int lane = threadIdx.x % kLanes, warp = threadIdx.x / kLanes;
  const int slice = warp % S;
  const int outputs = Gated ? w.rows / 2 : w.rows;
  const int row0 = (blockIdx.x * (kStagedWarps / S) + warp / S) * (Gated ? R / 2 : R);  // first output
  const int k = w.cols;
  const int segments = k / kSegment;
  const int padded = (k + kTile - 1) / kTile * kLanes;
  const int tiles = row0 < outputs ? padded / kLanes : 0;  // a warp past the last row idles
  const int group_shift = __ffs(w.group_size) - __ffs(kSegment);  // segment index -> group index
  const uint32_t* codes[R];
  const Raw* pairs[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int output = min(row0 + (Gated ? r / 2 : r), outputs - 1);
    const int64_t row = Gated && r % 2 ? outputs + output : output;
    codes[r] = w.codes + row * (k / 8);
    pairs[r] = static_cast<const Raw*>(w.scale_bias) + row * (k / w.group_size);
  }
  // Lanes past the last segment re-read it: their staged x and sums are zero.
  auto load = [&](int tile, Codes& next) {
    const int c = min(tile * kLanes + lane, segments - 1);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      next.words[r] = load_once_16(codes[r] + 4 * c);
      next.raw[r] = load_scale_bias<F32Scales>(pairs[r], c >> group_shift);
    }
  };
  // Two iterations of weights are requested before x is ready (see quant_gemv_kernel).
  Codes even{}, odd{};
  if (slice < tiles) load(slice, even);
  if (slice + S < tiles) load(slice + S, odd);
  wait_for_prior_kernels();

  // Staging: thread h takes inputs 8h..8h+7 (word h % 4 of segment h / 4) of every x row; the
  // padding segments get zeros.
  for (int h = threadIdx.x; h < k / kChunk; h += kStagedThreads) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const float4* src = reinterpret_cast<const float4*>(x + static_cast<int64_t>(m) * k) + 2 * h;
      const float4 a = __ldg(src), b = __ldg(src + 1);
      float4* seg = staged + (m * padded + h / 4) * kSlots;
      reinterpret_cast<float*>(seg + kSlots - 1)[h % 4] =
          ((a.x + a.y) + (a.z + a.w)) + ((b.x + b.y) + (b.z + b.w));
      const float v[kChunk] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
      float s[kChunk];
#pragma unroll
      for (int e = 0; e < kChunk; ++e) s[e] = v[e] * pow2(kXExp - code_offset<4>(e));
      seg[2 * (h % 4)] = make_float4(s[0], s[1], s[2], s[3]);
      seg[2 * (h % 4) + 1] = make_float4(s[4], s[5], s[6], s[7]);
    }
  }
  for (int h = k / kChunk + threadIdx.x; h < padded * 4; h += kStagedThreads)
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float4* seg = staged + (m * padded + h / 4) * kSlots;
      reinterpret_cast<float*>(seg + kSlots - 1)[h % 4] = 0.0f;
      seg[2 * (h % 4)] = seg[2 * (h % 4) + 1] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  __syncthreads();

  float acc_q[M][R], acc_b[M][R];  // sum of scale * dot * 2^kProductExp, sum of bias * sum(x)
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) acc_q[m][r] = acc_b[m][r] = 0.0f;
  auto compute = [&](int tile, const Codes& cur) {
    const float4* seg[M];
#pragma unroll
    for (int m = 0; m < M; ++m) seg[m] = staged + (m * padded + tile * kLanes + lane) * kSlots;
    float dot[M][R];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int r = 0; r < R; ++r) dot[m][r] = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float xs[M][kChunk];
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const float4 a = seg[m][2 * i], b = seg[m][2 * i + 1];
        xs[m][0] = a.x, xs[m][1] = a.y, xs[m][2] = a.z, xs[m][3] = a.w;
        xs[m][4] = b.x, xs[m][5] = b.y, xs[m][6] = b.z, xs[m][7] = b.w;
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const uint4& v = cur.words[r];
        const uint32_t word[1] = {i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w};
        float q[kChunk];
        extract_codes<4>(word, q);
#pragma unroll
        for (int m = 0; m < M; ++m)
#pragma unroll
          for (int e = 0; e < kChunk; ++e) dot[m][r] = fma_subnormal(q[e], xs[m][e], dot[m][r]);
      }
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const float4 sums = seg[m][kSlots - 1];
      const float xsum = (sums.x + sums.y) + (sums.z + sums.w);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float2 sb = unpack_scale_bias(cur.raw[r]);
        acc_q[m][r] = fmaf(sb.x, dot[m][r], acc_q[m][r]);
        acc_b[m][r] = fmaf(sb.y, xsum, acc_b[m][r]);
      }
    }
  };
  // Two register buffers in turn, so that no iteration copies codes between them.
  for (int t = slice; t < tiles; t += 2 * S) {
    compute(t, even);
    if (t + 2 * S < tiles) load(t + 2 * S, even);
    if (t + S >= tiles) break;
    compute(t + S, odd);
    if (t + 3 * S < tiles) load(t + 3 * S, odd);
  }
  allow_dependents();
  write_outputs<M, R, S, kStagedWarps, Gated>(acc_q, acc_b, partial, lane, warp, row0, outputs, y);
}

template <int M, int R, int S, bool F32Scales, bool Gated = false>
void launch_staged(const float* x, const QuantMatrix& w, float* y, cudaStream_t stream) {
  const auto kernel = quant_gemv4_staged_kernel<M, R, S, F32Scales, Gated>;
  const size_t smem = staged_smem_bytes(M, w.cols);
  if (smem > 48 * 1024) {
    // Once per process (one device per process, as the backend is used).
    static const cudaError_t allowed = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kStagedMaxSmem));
    MOXIN_CUDA_CHECK(allowed);
  }
  const int outputs_per_block = kStagedWarps / S * (Gated ? R / 2 : R);
  const int outputs = Gated ? w.rows / 2 : w.rows;
  const int blocks = (outputs + outputs_per_block - 1) / outputs_per_block;
  launch_kernel_prefetching(Gated ? "quant_gemv4_staged_kernel (swiglu)" : "quant_gemv4_staged_kernel", kernel, blocks,
                            kStagedThreads, smem, stream, x, w, y);
}

bool staged_usable(int m, const QuantMatrix& w) {
  return w.bits == 4 && staged_smem_bytes(m, w.cols) <= kStagedMaxSmem &&
         reinterpret_cast<uintptr_t>(w.codes) % 16 == 0;
}

// Tiling of the staged kernel by shape, from the H100 sweep of run 9 (share of copy, g64):
// M = 1, from 8192 rows 2 rows per warp ([14336x4096] 86%, [32064x4096] 98%; 4 rows: 83/94%),
// below 4 rows and K split over 2 warps ([4096x14336] 84%; unsplit 61-68%: too few warps per
// SM). M = 2: 4 rows per warp, no split (64/62/78%; its [4096x14336] needs 129 KB of shared
// memory, one block per SM, where a split would take two waves).
template <int M, bool F32Scales>
void launch_4bit(const float* x, const QuantMatrix& w, float* y, cudaStream_t stream) {
  if (!staged_usable(M, w)) return launch_default<M, 4, F32Scales>(x, w, y, stream);
  if (M == 2)
    launch_staged<M, 4, 1, F32Scales>(x, w, y, stream);
  else if (w.rows >= 8192)
    launch_staged<M, 2, 1, F32Scales>(x, w, y, stream);
  else
    launch_staged<M, 4, 2, F32Scales>(x, w, y, stream);
}

template <int M, int Bits, bool F32Scales>
void launch_bits(const float* x, const QuantMatrix& w, float* y, cudaStream_t stream) {
  if constexpr (Bits == 4)
    launch_4bit<M, F32Scales>(x, w, y, stream);
  else
    launch_default<M, Bits, F32Scales>(x, w, y, stream);
}

template <int Bits, bool F32Scales>
void launch_rows(const float* x, int m, const QuantMatrix& w, float* y, cudaStream_t stream) {
  static_assert(kQuantGemvMaxRows == 2, "instantiate the GEMV for every row count it takes");
  switch (m) {
    case 1: return launch_bits<1, Bits, F32Scales>(x, w, y, stream);
    case 2: return launch_bits<2, Bits, F32Scales>(x, w, y, stream);
    default: fail("[cuda] quant_gemv: ", m, " rows; the GEMV path takes 1..", kQuantGemvMaxRows);
  }
}

void check_usable(const float* x, const QuantMatrix& w) {
  MOXIN_CHECK(w.cols % 64 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0,
              "[cuda] quant_gemv: needs in_features % 64 == 0 (got ", w.cols,
              ") and 16-byte aligned activations");
}

}  // namespace

void quant_gemv(const float* x, int m, const QuantMatrix& w, float* y, cudaStream_t stream) {
  if (w.rows == 0 || m == 0) return;
  check_usable(x, w);
  if (w.bits == 4)
    w.f32_scales ? launch_rows<4, true>(x, m, w, y, stream) : launch_rows<4, false>(x, m, w, y, stream);
  else
    w.f32_scales ? launch_rows<8, true>(x, m, w, y, stream) : launch_rows<8, false>(x, m, w, y, stream);
}

bool quant_gemv_swiglu_usable(const float* x, const QuantMatrix& w) {
  return w.rows % 2 == 0 && w.cols % 64 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
}

namespace {

// The kernel and tiling quant_gemv takes at M = 1 for this matrix (gate | up counted whole):
// 4-bit staged, 2 rows (one pair) per warp from 8192 rows, else 4 (two pairs) with K split in 2;
// otherwise launch_default's tiling.
template <bool F32Scales>
void launch_swiglu(const float* x, const QuantMatrix& w, float* y, cudaStream_t stream) {
  if (w.bits == 4 && staged_usable(1, w)) {
    if (w.rows >= 8192)
      launch_staged<1, 2, 1, F32Scales, true>(x, w, y, stream);
    else
      launch_staged<1, 4, 2, F32Scales, true>(x, w, y, stream);
  } else if (w.bits == 4) {
    launch_default<1, 4, F32Scales, true>(x, w, y, stream);
  } else {
    launch_default<1, 8, F32Scales, true>(x, w, y, stream);
  }
}

}  // namespace

void quant_gemv_swiglu(const float* x, const QuantMatrix& w, float* y, cudaStream_t stream) {
  MOXIN_CHECK(quant_gemv_swiglu_usable(x, w), "[cuda] quant_gemv_swiglu: needs an even row count, in_features % 64 "
              "== 0 (got ", w.cols, ") and 16-byte aligned activations");
  w.f32_scales ? launch_swiglu<true>(x, w, y, stream) : launch_swiglu<false>(x, w, y, stream);
}

bool quant_gemv_variant(int rows_per_warp, int k_split, int min_blocks, const float* x,
                        const QuantMatrix& w, float* y, cudaStream_t stream) {
  check_usable(x, w);
  if (w.f32_scales) return false;
  auto run = [&](auto rows, auto split, auto blocks) {
    constexpr int R = decltype(rows)::value, S = decltype(split)::value;
    constexpr int B = decltype(blocks)::value;
    if (w.bits == 4)
      launch<1, R, S, 4, false, B>(x, w, y, stream);
    else
      launch<1, R, S, 8, false, B>(x, w, y, stream);
    return true;
  };
  using One = std::integral_constant<int, 1>;
  using Two = std::integral_constant<int, 2>;
  using Four = std::integral_constant<int, 4>;
  using Eight = std::integral_constant<int, 8>;
  switch (100 * rows_per_warp + 10 * k_split + min_blocks) {
    case 211: return run(Two{}, One{}, One{});
    case 218: return run(Two{}, One{}, Eight{});
    case 228: return run(Two{}, Two{}, Eight{});
    case 411: return run(Four{}, One{}, One{});
    case 421: return run(Four{}, Two{}, One{});
    default: return false;
  }
}

bool quant_gemv4_variant(bool staged, int m, int rows_per_warp, int k_split, const float* x,
                         const QuantMatrix& w, float* y, cudaStream_t stream) {
  check_usable(x, w);
  if (w.bits != 4 || w.f32_scales || (staged && !staged_usable(m, w))) return false;
  if (!staged) {
    if (m != 2 || rows_per_warp != 4 || k_split > 2) return false;
    k_split == 1 ? launch<2, 4, 1, 4, false>(x, w, y, stream) : launch<2, 4, 2, 4, false>(x, w, y, stream);
    return true;
  }
  auto run = [&](auto rows) {
    constexpr int M = decltype(rows)::value;
    switch (10 * rows_per_warp + k_split) {
      case 21: launch_staged<M, 2, 1, false>(x, w, y, stream); return true;
      case 22: launch_staged<M, 2, 2, false>(x, w, y, stream); return true;
      case 41: launch_staged<M, 4, 1, false>(x, w, y, stream); return true;
      case 42: launch_staged<M, 4, 2, false>(x, w, y, stream); return true;
      default: return false;
    }
  };
  if (m == 1) return run(std::integral_constant<int, 1>{});
  if (m == 2) return run(std::integral_constant<int, 2>{});
  return false;
}

}  // namespace moxin::cuda
