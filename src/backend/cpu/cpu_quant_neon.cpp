// NEON quantized kernels for ARM64 (the quantized twins of cpu_kernels_neon.cpp). GEMV: a run
// of 32 codes widened u8 -> u16 -> u32 -> f32 in registers once and multiplied into up to 4
// activation rows, each group's partial sums scaled into a per-row accumulator that is reduced
// once per output. Dequantizer: scale * code + bias for the prefill GEMM. The Int8 matrix
// instructions (FEAT_I8MM) are not used: like VNNI on x86 they need integer activations.
#include "backend/cpu/cpu_quant_kernels.hpp"

#if defined(__aarch64__) && defined(__linux__)
#define MOXIN_HAVE_NEON_QUANT 1
#include <arm_neon.h>
#include <sys/auxv.h>

#include <algorithm>
#endif

namespace moxin::cpu {

#if defined(MOXIN_HAVE_NEON_QUANT)
namespace {

// The 32 codes of inputs c .. c + 31 of a row as 8 vectors of f32, in the order quant_gemv's
// activations hold them (for 4 bits: the 16 low nibbles, then the 16 high ones).
template <int Bits>
inline void decode32(const uint8_t* row_codes, int64_t c, float32x4_t v[8]) {
  uint8x16_t bytes[2];
  if constexpr (Bits == 8) {
    bytes[0] = vld1q_u8(row_codes + c);
    bytes[1] = vld1q_u8(row_codes + c + 16);
  } else {
    const uint8x16_t packed = vld1q_u8(row_codes + c / 2);
    bytes[0] = vandq_u8(packed, vdupq_n_u8(15));
    bytes[1] = vshrq_n_u8(packed, 4);
  }
  for (int h = 0; h < 2; ++h) {
    const uint16x8_t low = vmovl_u8(vget_low_u8(bytes[h])), high = vmovl_high_u8(bytes[h]);
    v[4 * h + 0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(low)));
    v[4 * h + 1] = vcvtq_f32_u32(vmovl_high_u16(low));
    v[4 * h + 2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(high)));
    v[4 * h + 3] = vcvtq_f32_u32(vmovl_high_u16(high));
  }
}

// Output n of MG activation rows: y[m * ldy + n] = sum_g scale_g dot_g + bias_g xsum_g.
template <int Bits, int MG>
void gemv_row(const QuantView& w, int64_t n, const float* xp, const float* xsum, float* y, int64_t ldy) {
  const int64_t K = w.cols, groups = w.groups_per_row();
  const auto* codes = reinterpret_cast<const uint8_t*>(w.codes + n * w.words_per_row());
  float32x4_t total[MG];
  float bias_total[MG];
  for (int m = 0; m < MG; ++m) {
    total[m] = vdupq_n_f32(0.0f);
    bias_total[m] = 0.0f;
  }
  for (int64_t g = 0; g < groups; ++g) {
    float32x4_t dot[MG][2];
    for (int m = 0; m < MG; ++m) dot[m][0] = dot[m][1] = vdupq_n_f32(0.0f);
    for (int64_t c = g * w.group_size; c < (g + 1) * w.group_size; c += 32) {
      float32x4_t v[8];
      decode32<Bits>(codes, c, v);
      for (int m = 0; m < MG; ++m)
        for (int j = 0; j < 8; ++j) dot[m][j % 2] = vfmaq_f32(dot[m][j % 2], v[j], vld1q_f32(xp + m * K + c + 4 * j));
    }
    const float scale = load_scale(w.scales, w.scale_dtype, n * groups + g);
    const float bias = load_scale(w.biases, w.scale_dtype, n * groups + g);
    for (int m = 0; m < MG; ++m) {
      total[m] = vfmaq_n_f32(total[m], vaddq_f32(dot[m][0], dot[m][1]), scale);
      bias_total[m] += bias * xsum[m * groups + g];
    }
  }
  for (int m = 0; m < MG; ++m) y[m * ldy + n] = vaddvq_f32(total[m]) + bias_total[m];
}

template <int Bits>
void gemv_bits(const QuantView& w, int64_t n0, int64_t n1, const float* xp, int64_t M, const float* xsum, float* y,
               int64_t ldy) {
  const int64_t K = w.cols, groups = w.groups_per_row();
  for (int64_t m0 = 0; m0 < M; m0 += 4) {
    const float* x = xp + m0 * K;
    const float* s = xsum + m0 * groups;
    float* ym = y + m0 * ldy;
    for (int64_t n = n0; n < n1; ++n) {
      switch (std::min<int64_t>(4, M - m0)) {
        case 1: gemv_row<Bits, 1>(w, n, x, s, ym, ldy); break;
        case 2: gemv_row<Bits, 2>(w, n, x, s, ym, ldy); break;
        case 3: gemv_row<Bits, 3>(w, n, x, s, ym, ldy); break;
        default: gemv_row<Bits, 4>(w, n, x, s, ym, ldy); break;
      }
    }
  }
}

void gemv(const QuantView& w, int64_t n0, int64_t n1, const float* xp, int64_t M, const float* xsum, float* y,
          int64_t ldy) {
  if (w.bits == 8)
    gemv_bits<8>(w, n0, n1, xp, M, xsum, y, ldy);
  else
    gemv_bits<4>(w, n0, n1, xp, M, xsum, y, ldy);
}

// Codes in input order: for 4 bits, byte b of a 32-input run holds inputs 2b (low nibble) and
// 2b + 1 (high nibble), so the nibbles are interleaved back (zip).
void dequantize(const QuantView& w, int64_t r0, int64_t r1, float* out) {
  const int64_t K = w.cols, groups = w.groups_per_row();
  for (int64_t r = r0; r < r1; ++r) {
    const auto* codes = reinterpret_cast<const uint8_t*>(w.codes + r * w.words_per_row());
    float* row = out + (r - r0) * K;
    for (int64_t g = 0; g < groups; ++g) {
      const float32x4_t scale = vdupq_n_f32(load_scale(w.scales, w.scale_dtype, r * groups + g));
      const float32x4_t bias = vdupq_n_f32(load_scale(w.biases, w.scale_dtype, r * groups + g));
      for (int64_t c = g * w.group_size; c < (g + 1) * w.group_size; c += 32) {
        uint8x16_t bytes[2];
        if (w.bits == 8) {
          bytes[0] = vld1q_u8(codes + c);
          bytes[1] = vld1q_u8(codes + c + 16);
        } else {
          const uint8x16_t packed = vld1q_u8(codes + c / 2);
          const uint8x16_t low = vandq_u8(packed, vdupq_n_u8(15)), high = vshrq_n_u8(packed, 4);
          bytes[0] = vzip1q_u8(low, high);
          bytes[1] = vzip2q_u8(low, high);
        }
        for (int h = 0; h < 2; ++h) {
          const uint16x8_t wide[2] = {vmovl_u8(vget_low_u8(bytes[h])), vmovl_high_u8(bytes[h])};
          for (int q = 0; q < 4; ++q) {
            const uint32x4_t u = q % 2 ? vmovl_high_u16(wide[q / 2]) : vmovl_u16(vget_low_u16(wide[q / 2]));
            // An f32 product, then an f32 sum (no FMA), as the portable dequantizer rounds.
            vst1q_f32(row + c + 16 * h + 4 * q, vaddq_f32(vmulq_f32(vcvtq_f32_u32(u), scale), bias));
          }
        }
      }
    }
  }
}

bool cpu_has_neon() {
  static const bool supported = (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0;
  return supported;
}

}  // namespace
#endif  // MOXIN_HAVE_NEON_QUANT

QuantGemvFn quant_gemv_neon() {
#if defined(MOXIN_HAVE_NEON_QUANT)
  return cpu_has_neon() ? gemv : nullptr;
#else
  return nullptr;
#endif
}

QuantDequantizeFn quant_dequantize_neon() {
#if defined(MOXIN_HAVE_NEON_QUANT)
  return cpu_has_neon() ? dequantize : nullptr;
#else
  return nullptr;
#endif
}

}  // namespace moxin::cpu
