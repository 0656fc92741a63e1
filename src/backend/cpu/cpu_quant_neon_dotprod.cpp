// ARM64 integer quantized GEMV on the dot-product instructions: 4-bit codes on SDOT (FEAT_DotProd:
// four int8 products summed into each i32 lane; Armv8.4 and later, Apple M1 on, Neoverse N1 / V1 /
// V2 as in Grace), 8-bit codes on USDOT where the CPU also has FEAT_I8MM (unsigned x signed
// bytes: Apple M2 on, Neoverse V1 / V2 / N2). The NEON f32 kernel (cpu_quant_neon.cpp) widens every code to f32 in four
// steps before its FMA, so it spends ~30 instructions on 32 codes and one activation row; here a
// 16-byte load of 32 codes splits into its low and high nibbles (two instructions) and meets the
// activations in six SDOTs, ~10 instructions per 32 codes and activation row.
//
// The activations are split as for the x86 integer kernels (cpu_quant_split.hpp): per group a
// 24-bit fixed-point value as three signed bytes h, l, t, so the products are exact and the sums
// as fine as f32 near the group's largest element. Layout per activation row, in chunks of 32
// inputs (96 bytes): h of the even inputs, h of the odd ones, then l and t likewise, byte b of an
// "even" vector being input 2b of the chunk: the low nibble of code byte b (MLX packs input 2b in
// the low nibble, 2b + 1 in the high one), so SDOT lane j sums inputs 8j .. 8j + 7 of the chunk.
// Per chunk: dot = 65536 D_h + 256 D_l + D_t by Horner's rule in the i32 lanes (each part's lane
// sums 8 products of at most 15 * 128, so |dot| < 1.1e9), one conversion to f32, then
// y += dot * scale * 2^(e - 16) per lane, and bias * sum(x) per group as quant_gemv_generic forms it.
//
// 8-bit codes (0..255) do not fit SDOT's signed bytes: USDOT takes them as unsigned, in input order
// (32 inputs: parts of inputs 0-15, then 16-31); D_h stays apart there (8 products of up to
// 255 * 128 a lane) and dot = 65536 D_h + (256 D_l + D_t) is formed in f32, as the VNNI kernel
// does. Without I8MM they keep the NEON f32 kernel.
#include "backend/cpu/cpu_quant_kernels.hpp"
#include "backend/cpu/cpu_quant_split.hpp"

#if defined(__aarch64__) && defined(__linux__) && defined(__GNUC__)
#define MOXIN_HAVE_NEON_DOTPROD 1
#include <arm_neon.h>
#include <asm/hwcap.h>
#include <sys/auxv.h>

#include <algorithm>
#include <cmath>
#include <vector>
#endif

namespace moxin::cpu {

#if defined(MOXIN_HAVE_NEON_DOTPROD)
namespace {

constexpr int64_t kChunkInputs = 32;
constexpr int64_t kChunkBytes = 3 * kChunkInputs;  // split activation bytes per chunk
constexpr int kTileRows = 4;
// Bytes of a row's codes ahead of the current chunk that a chunk pulls into L1.
constexpr int64_t kL1Ahead = 256;

// Narrows 16 i32 values in [-128, 127] to bytes (two's complement: the low byte).
inline int8x16_t narrow16(const int32x4_t v[4]) {
  const int16x8_t a = vcombine_s16(vmovn_s32(v[0]), vmovn_s32(v[1]));
  const int16x8_t b = vcombine_s16(vmovn_s32(v[2]), vmovn_s32(v[3]));
  return vcombine_s8(vmovn_s16(a), vmovn_s16(b));
}

// The three signed bytes of 16 integers q (|q| <= 127 * 65536): q = 65536 h + 256 l + t.
inline void store_parts(const int32x4_t q[4], int8_t* h, int8_t* l, int8_t* t) {
  int32x4_t hv[4], lv[4], tv[4];
  for (int i = 0; i < 4; ++i) {
    tv[i] = vshrq_n_s32(vshlq_n_s32(q[i], 24), 24);
    const int32x4_t rest = vshrq_n_s32(vsubq_s32(q[i], tv[i]), 8);
    lv[i] = vshrq_n_s32(vshlq_n_s32(rest, 24), 24);
    hv[i] = vshrq_n_s32(vsubq_s32(rest, lv[i]), 8);
  }
  vst1q_s8(h, narrow16(hv));
  vst1q_s8(l, narrow16(lv));
  vst1q_s8(t, narrow16(tv));
}

// One activation row into the layout above; pow2[g] = 2^(e - 16), sums[g] = sum of group g.
// False when some x is not finite: the split cannot carry it.
bool split_row(int bits, int64_t cols, int64_t group_size, const float* x, int8_t* parts, float* pow2, float* sums) {
  const float32x4_t infinity = vdupq_n_f32(INFINITY);
  for (int64_t g = 0; g < cols / group_size; ++g) {
    const float* xg = x + g * group_size;
    float32x4_t amax = vdupq_n_f32(0.0f), sum = vdupq_n_f32(0.0f);
    uint32x4_t bad = vdupq_n_u32(0);
    for (int64_t k = 0; k < group_size; k += 4) {
      const float32x4_t v = vld1q_f32(xg + k);
      const float32x4_t magnitude = vabsq_f32(v);
      bad = vorrq_u32(bad, vmvnq_u32(vcltq_f32(magnitude, infinity)));  // inf or NaN
      amax = vmaxq_f32(amax, magnitude);
      sum = vaddq_f32(sum, v);
    }
    if (vmaxvq_u32(bad) != 0) return false;
    const int e = split_exponent(vmaxvq_f32(amax));
    pow2[g] = std::ldexp(1.0f, e - 16);
    sums[g] = vaddvq_f32(sum);
    // Power-of-two scaling is exact; one rounding to the nearest integer (ties to even).
    const float32x4_t to_fixed = vdupq_n_f32(std::ldexp(1.0f, 16 - e));
    for (int64_t k = 0; k < group_size; k += kChunkInputs) {
      int32x4_t q[8];
      for (int i = 0; i < 8; ++i) q[i] = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(xg + k + 4 * i), to_fixed));
      // 4 bits: the even inputs' vector first, then the odd ones' (see the file comment); 8 bits:
      // inputs 0-15, then 16-31.
      int32x4_t first[4], second[4];
      for (int i = 0; i < 4; ++i) {
        first[i] = bits == 4 ? vuzp1q_s32(q[2 * i], q[2 * i + 1]) : q[i];
        second[i] = bits == 4 ? vuzp2q_s32(q[2 * i], q[2 * i + 1]) : q[4 + i];
      }
      int8_t* dst = parts + (g * group_size + k) / kChunkInputs * kChunkBytes;
      store_parts(first, dst, dst + 32, dst + 64);
      store_parts(second, dst + 16, dst + 48, dst + 80);
    }
  }
  return true;
}

// Scales or biases i .. i + 3 of a row as f32.
inline float32x4_t load4_scales(const void* data, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::BF16: return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(static_cast<const uint16_t*>(data) + i), 16));
    case DType::F16: return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(static_cast<const uint16_t*>(data) + i)));
    default: return vld1q_f32(static_cast<const float*>(data) + i);
  }
}

// scaled[(r * MM + m) * stride + g] = scale(n + r, g) * 2^(e(m, g) - 16) and biased[r][m] =
// sum_g bias(n + r, g) * sum(m, g) for a tile's R weight rows from n and MM activation rows. Once
// per tile, but per group it costs about what a group's dot products do: four groups a load, each
// scale and bias loaded once for all MM activation rows.
template <int R, int MM>
void scale_tile(const QuantView& w, const GemvShape& s, int64_t n, const float* pow2, const float* sums,
                float* scaled, float (&biased)[R][MM]) {
  const int64_t whole = s.groups / 4 * 4;
  for (int r = 0; r < R; ++r) {
    const int64_t row = (n + r) * s.groups;
    float32x4_t b4[MM];
    for (int m = 0; m < MM; ++m) b4[m] = vdupq_n_f32(0.0f);
    for (int64_t g = 0; g < whole; g += 4) {
      const float32x4_t scale = load4_scales(w.scales, w.scale_dtype, row + g);
      const float32x4_t bias = load4_scales(w.biases, w.scale_dtype, row + g);
      for (int m = 0; m < MM; ++m) {
        vst1q_f32(scaled + (r * MM + m) * s.group_stride + g, vmulq_f32(scale, vld1q_f32(pow2 + m * s.group_stride + g)));
        b4[m] = vfmaq_f32(b4[m], bias, vld1q_f32(sums + m * s.group_stride + g));
      }
    }
    for (int m = 0; m < MM; ++m) biased[r][m] = vaddvq_f32(b4[m]);
    for (int64_t g = whole; g < s.groups; ++g) {
      const float scale = load_scale(w.scales, w.scale_dtype, row + g), bias = load_scale(w.biases, w.scale_dtype, row + g);
      for (int m = 0; m < MM; ++m) {
        scaled[(r * MM + m) * s.group_stride + g] = scale * pow2[m * s.group_stride + g];
        biased[r][m] = std::fma(bias, sums[m * s.group_stride + g], biased[r][m]);
      }
    }
  }
}

// R weight rows from n against MM activation rows, per chunk of 32 inputs: load(p) takes a row's
// code bytes of the chunk, dot(codes, part) their per-lane dot products with the six part vectors
// of an activation row as f32 (2^(e - 16) units). Inlined into each ISA's tile function, so the
// two run with their own target's instructions.
template <int Bits, int R, int MM, class Load, class Dot>
__attribute__((always_inline)) inline void run_tile(const QuantView& w, const GemvShape& s, int64_t n,
                                                    const int8_t* parts, const float* pow2, const float* sums,
                                                    float* y, int64_t ldy, float* scaled, Load&& load, Dot&& dot) {
  constexpr int64_t kCodeBytes = kChunkInputs * Bits / 8;
  const int64_t row_bytes = w.cols * Bits / 8, chunks = w.cols / kChunkInputs;
  const int shift = __builtin_ctzll(static_cast<unsigned long long>(w.group_size / kChunkInputs));  // chunk -> group
  const uint8_t* codes[R];
  for (int r = 0; r < R; ++r) codes[r] = reinterpret_cast<const uint8_t*>(w.codes) + (n + r) * row_bytes;
  float biased[R][MM];
  scale_tile<R, MM>(w, s, n, pow2, sums, scaled, biased);

  float32x4_t acc[R][MM];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MM; ++m) acc[r][m] = vdupq_n_f32(0.0f);
  for (int64_t c = 0; c < chunks; ++c) {
    decltype(load(codes[0])) code[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = codes[r] + c * kCodeBytes;
      // The same bytes of the next tile of rows (each line fetched once, a tile ahead), and
      // this row's line a few chunks on into L1.
      __builtin_prefetch(p + R * row_bytes, 0, 2);
      __builtin_prefetch(p + kL1Ahead, 0, 3);
      code[r] = load(p);
    }
    const int64_t g = c >> shift;
    for (int m = 0; m < MM; ++m) {
      const int8_t* a = parts + m * s.part_bytes + c * kChunkBytes;
      int8x16_t part[6];
      for (int i = 0; i < 6; ++i) part[i] = vld1q_s8(a + 16 * i);
      for (int r = 0; r < R; ++r)
        acc[r][m] = vfmaq_n_f32(acc[r][m], dot(code[r], part), scaled[(r * MM + m) * s.group_stride + g]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MM; ++m) y[m * ldy + n + r] = vaddvq_f32(acc[r][m]) + biased[r][m];
}

// Two code vectors of a chunk: 4 bits: its low and its high nibbles; 8 bits: inputs 0-15, 16-31.
struct ChunkCodes {
  uint8x16_t a, b;
};

#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
// 4-bit rows: per 32 inputs, six SDOTs per (row, activation row), Horner's rule in the lanes.
template <int R, int MM>
void gemv_tile4(const QuantView& w, const GemvShape& s, int64_t n, const int8_t* parts, const float* pow2,
                const float* sums, float* y, int64_t ldy, float* scaled) {
  const uint8x16_t low_nibbles = vdupq_n_u8(15);
  run_tile<4, R, MM>(
      w, s, n, parts, pow2, sums, y, ldy, scaled,
      [&](const uint8_t* p) {
        const uint8x16_t raw = vld1q_u8(p);
        return ChunkCodes{vandq_u8(raw, low_nibbles), vshrq_n_u8(raw, 4)};
      },
      [](const ChunkCodes& c, const int8x16_t* part) {
        const int8x16_t lo = vreinterpretq_s8_u8(c.a), hi = vreinterpretq_s8_u8(c.b);
        int32x4_t d = vdotq_s32(vdotq_s32(vdupq_n_s32(0), lo, part[0]), hi, part[1]);
        d = vdotq_s32(vdotq_s32(vshlq_n_s32(d, 8), lo, part[2]), hi, part[3]);
        d = vdotq_s32(vdotq_s32(vshlq_n_s32(d, 8), lo, part[4]), hi, part[5]);
        return vcvtq_f32_s32(d);
      });
}

#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod+i8mm")
// 8-bit rows: per 32 inputs, six USDOTs per (row, activation row). Each lane sums 8 products of
// at most 255 * 128 per part, so D_h stays apart (as in the VNNI kernel) and 256 D_l + D_t fits
// int32.
template <int R, int MM>
void gemv_tile8(const QuantView& w, const GemvShape& s, int64_t n, const int8_t* parts, const float* pow2,
                const float* sums, float* y, int64_t ldy, float* scaled) {
  const float32x4_t two_16 = vdupq_n_f32(65536.0f);
  run_tile<8, R, MM>(
      w, s, n, parts, pow2, sums, y, ldy, scaled, [](const uint8_t* p) { return ChunkCodes{vld1q_u8(p), vld1q_u8(p + 16)}; },
      [&](const ChunkCodes& c, const int8x16_t* part) {
        const int32x4_t high = vusdotq_s32(vusdotq_s32(vdupq_n_s32(0), c.a, part[0]), c.b, part[1]);
        int32x4_t low = vusdotq_s32(vusdotq_s32(vdupq_n_s32(0), c.a, part[2]), c.b, part[3]);
        low = vusdotq_s32(vusdotq_s32(vshlq_n_s32(low, 8), c.a, part[4]), c.b, part[5]);
        return vfmaq_f32(vcvtq_f32_s32(low), vcvtq_f32_s32(high), two_16);
      });
}

#pragma GCC pop_options

// Rows [n0, n1) in tiles (cpu_quant_split.hpp's for_each_tile), on the tile function of the codes' width.
template <int Bits>
void gemv(const QuantView& w, const GemvShape& s, int64_t n0, int64_t n1, int64_t M, const int8_t* parts,
          const float* pow2, const float* sums, float* y, int64_t ldy, float* scaled) {
  for_each_tile<kTileRows>(n0, n1, M, w.cols * Bits / 8, [&](auto rows, auto pair, int64_t n, int64_t m) {
    constexpr int R = decltype(rows)::value, MM = decltype(pair)::value;
    const int8_t* p = parts + m * s.part_bytes;
    const float *p2 = pow2 + m * s.group_stride, *su = sums + m * s.group_stride;
    if constexpr (Bits == 4)
      gemv_tile4<R, MM>(w, s, n, p, p2, su, y + m * ldy, ldy, scaled);
    else
      gemv_tile8<R, MM>(w, s, n, p, p2, su, y + m * ldy, ldy, scaled);
  });
}

bool cpu_has_i8mm() {
  static const bool supported = (getauxval(AT_HWCAP2) & HWCAP2_I8MM) != 0;
  return supported;
}

}  // namespace
#endif  // MOXIN_HAVE_NEON_DOTPROD

bool quant_neon_dotprod_supported() {
#if defined(MOXIN_HAVE_NEON_DOTPROD)
  static const bool supported = (getauxval(AT_HWCAP) & HWCAP_ASIMD) && (getauxval(AT_HWCAP) & HWCAP_ASIMDDP);
  return supported;
#else
  return false;
#endif
}

bool quant_gemv_neon_dotprod(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const QuantView& w, float* y,
                             int64_t ldy) {
#if defined(MOXIN_HAVE_NEON_DOTPROD)
  // Groups of 32, 64 or 128 inputs: every chunk lies in one group and every row is whole chunks.
  if (!quant_neon_dotprod_supported() || w.group_size % kChunkInputs != 0) return false;
  if (w.bits != 4 && (w.bits != 8 || !cpu_has_i8mm())) return false;
  const GemvShape s(w);  // part_bytes holds the 3 bytes per input this layout needs (and more)
  SplitActivations split(s, M);
  return run_split_gemv(
      pool, M, x, ldx, w, s, split, kTileRows,
      [&](const float* row, int8_t* parts, float* pow2, float* sums) {
        return split_row(w.bits, w.cols, w.group_size, row, parts, pow2, sums);
      },
      [&](int64_t t0, int64_t t1) {
        std::vector<float> scaled(static_cast<size_t>(kTileRows * 2 * s.group_stride));
        (w.bits == 4 ? gemv<4> : gemv<8>)(w, s, t0 * kTileRows, std::min(w.rows, t1 * kTileRows), M, split.parts,
                                      split.pow2.data(), split.sums.data(), y, ldy, scaled.data());
      });
#else
  (void)pool, (void)M, (void)x, (void)ldx, (void)w, (void)y, (void)ldy;
  return false;
#endif
}

}  // namespace moxin::cpu
