// NEON kernels for ARM64 CPUs (Apple silicon under Linux, NVIDIA Grace, AWS Graviton...): the
// algorithms of cpu_kernels_avx2.cpp with 4-lane vectors and AArch64's 32 vector registers.
// NEON, FMA and f16 <-> f32 conversion are part of the base ARMv8-A ISA, so this file needs no
// target attributes; neon_kernels() still asks the kernel (HWCAP_ASIMD) before handing them out.
// Weights go bf16 -> f32 by a 16-bit widening shift (shll), f16 -> f32 by fcvtl; activations and
// accumulators stay f32. The BF16 dot-product instructions (BFDOT/BFMMLA, FEAT_BF16) are not
// used: they multiply bf16 by bf16, and the CPU backend's activations are f32 (rounding them
// to bf16 would cost the 1e-4 parity with the f32 reference, tests/py/test_parity.py).
#include "backend/cpu/cpu_kernels.hpp"

#if defined(__aarch64__) && defined(__linux__)
#define MOXIN_HAVE_NEON_KERNELS 1
#include <arm_neon.h>
#include <sys/auxv.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu_gelu_fit.hpp"
#include "backend/cpu/cpu_simd_dispatch.hpp"
#include "core/check.hpp"
#endif

namespace moxin::cpu {

#if defined(MOXIN_HAVE_NEON_KERNELS)
namespace {

// Register tile of the GEMM: 6 activation rows x 16 weight rows = 24 accumulators, plus four
// panel vectors (of 32 registers).
constexpr int kTileRows = 6;
constexpr int kPanelWidth = 16;

// AVX2's threshold, not yet measured on ARM hardware (qemu says nothing about speed):
// bench/cpu_ops_bench.cpp BM_Gemm at M = 32 ... 129 on an ARM64 machine decides it.
constexpr int64_t kGemvMaxRows = 32;

// Lanes [0, n) set (all for n >= 4, none for n <= 0).
inline uint32x4_t first_lanes(int64_t n) {
  static const int32_t kLane[4] = {0, 1, 2, 3};
  const int32_t count = static_cast<int32_t>(std::clamp<int64_t>(n, 0, 4));
  return vcltq_s32(vld1q_s32(kLane), vdupq_n_s32(count));
}

// The first n (< 4) values go through a zeroed stack copy: NEON has no masked loads/stores.
inline float32x4_t load_first(const float* p, int64_t n) {
  if (n >= 4) return vld1q_f32(p);
  float copy[4] = {};
  std::memcpy(copy, p, static_cast<size_t>(std::max<int64_t>(n, 0)) * sizeof(float));
  return vld1q_f32(copy);
}

inline void store_first(float* p, int64_t n, float32x4_t v) {
  if (n >= 4) return vst1q_f32(p, v);
  float copy[4];
  vst1q_f32(copy, v);
  std::memcpy(p, copy, static_cast<size_t>(std::max<int64_t>(n, 0)) * sizeof(float));
}

// Loads 4 consecutive weights as f32.
struct Bf16Weights {
  using T = uint16_t;
  static float32x4_t load(const T* p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
};

struct F16Weights {
  using T = uint16_t;
  static float32x4_t load(const T* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
};

struct F32Weights {
  using T = float;
  static float32x4_t load(const T* p) { return vld1q_f32(p); }
};

// All 4, or the first n with zeros after.
template <class L>
float32x4_t load_weights(const typename L::T* p, int64_t n) {
  if (n >= 4) return L::load(p);
  typename L::T copy[4] = {};
  std::memcpy(copy, p, static_cast<size_t>(std::max<int64_t>(n, 0)) * sizeof(typename L::T));
  return L::load(copy);
}

// --- GEMV: R weight rows x MG activation rows, one pass over K --------------------------

// acc[r][m] partial sums over K, one vector each: a row's result does not depend on which rows
// share its tile. (ARM cores' hardware prefetchers follow the R streams without help.)
template <class L, int R, int MG>
void gemv_tile(const typename L::T* w, int64_t ld, int64_t K, const float* x, int64_t ldx, const float* bias,
               float* y, int64_t ldy) {
  float32x4_t acc[R][MG];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MG; ++m) acc[r][m] = vdupq_n_f32(0.0f);
  for (int64_t k = 0; k < K; k += 4) {
    float32x4_t xv[MG];
    for (int m = 0; m < MG; ++m) xv[m] = load_first(x + m * ldx + k, K - k);
    for (int r = 0; r < R; ++r) {
      const float32x4_t wv = load_weights<L>(w + r * ld + k, K - k);
      for (int m = 0; m < MG; ++m) acc[r][m] = vfmaq_f32(acc[r][m], wv, xv[m]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const float b = bias ? bias[r] : 0.0f;
    for (int m = 0; m < MG; ++m) y[m * ldy + r] = b + vaddvq_f32(acc[r][m]);
  }
}

// Rows [0, rows) against MG activation rows: tiles of R rows, single rows for the rest.
template <class L, int MG>
void gemv_rows(const typename L::T* w, int64_t ld, int64_t rows, int64_t K, const float* x, int64_t ldx,
               const float* bias, float* y, int64_t ldy) {
  constexpr int R = MG == 1 ? 8 : 4;
  int64_t r = 0;
  for (; r + R <= rows; r += R)
    gemv_tile<L, R, MG>(w + r * ld, ld, K, x, ldx, bias ? bias + r : nullptr, y + r, ldy);
  for (; r < rows; ++r) gemv_tile<L, 1, MG>(w + r * ld, ld, K, x, ldx, bias ? bias + r : nullptr, y + r, ldy);
}

void gemv(const WeightView& w, int64_t n0, int64_t n1, const float* x, int64_t ldx, int64_t M, const float* bias,
          float* y, int64_t ldy) {
  gemv_in_l2_blocks<Bf16Weights, F16Weights, F32Weights>(
      w, n0, n1, x, ldx, M, bias, y, ldy,
      [](auto mg, auto loader, auto... args) { gemv_rows<decltype(loader), decltype(mg)::value>(args...); });
}

// --- GEMM panels: 4 x 4 blocks converted, transposed in registers, stored k-major --------

// In: r[i] = row i (4 columns). Out: r[j] = column j (4 rows).
inline void transpose4x4(float32x4_t r[4]) {
  const float32x4x2_t top = vtrnq_f32(r[0], r[1]), bottom = vtrnq_f32(r[2], r[3]);
  r[0] = vcombine_f32(vget_low_f32(top.val[0]), vget_low_f32(bottom.val[0]));
  r[1] = vcombine_f32(vget_low_f32(top.val[1]), vget_low_f32(bottom.val[1]));
  r[2] = vcombine_f32(vget_high_f32(top.val[0]), vget_high_f32(bottom.val[0]));
  r[3] = vcombine_f32(vget_high_f32(top.val[1]), vget_high_f32(bottom.val[1]));
}

template <class L>
void pack_panels_typed(const WeightView& w, int64_t n0, int64_t nc, int64_t k0, int64_t kc, float* panels) {
  const auto* base = static_cast<const typename L::T*>(w.data);
  const int64_t num_panels = (nc + kPanelWidth - 1) / kPanelWidth;
  for (int64_t p = 0; p < num_panels; ++p) {
    float* panel = panels + p * kc * kPanelWidth;
    for (int quarter = 0; quarter < kPanelWidth / 4; ++quarter) {
      const int64_t first_row = p * kPanelWidth + quarter * 4;
      const int64_t valid_rows = std::clamp<int64_t>(nc - first_row, 0, 4);
      for (int64_t k = 0; k < kc; k += 4) {
        const int64_t width = std::min<int64_t>(4, kc - k);
        float32x4_t r[4];
        for (int i = 0; i < 4; ++i)
          r[i] = i < valid_rows ? load_weights<L>(base + (n0 + first_row + i) * w.ld + k0 + k, width)
                                : vdupq_n_f32(0.0f);
        transpose4x4(r);
        for (int64_t j = 0; j < width; ++j) vst1q_f32(panel + (k + j) * kPanelWidth + quarter * 4, r[j]);
      }
    }
  }
}

void pack_panels(const WeightView& w, int64_t n0, int64_t nc, int64_t k0, int64_t kc, float* panels) {
  with_weight_loader<Bf16Weights, F16Weights, F32Weights>(
      w.dtype, [&](auto loader) { pack_panels_typed<decltype(loader)>(w, n0, nc, k0, kc, panels); });
}

// --- GEMM register tile: 6 rows x 16 columns = 24 accumulators ----------------------------

void gemm_tile(int64_t kc, const float* a, int64_t lda, int mr, const float* panel, int nr, float* c, int64_t ldc,
               const float* bias, bool accumulate) {
  constexpr int kVectors = kPanelWidth / 4;
  // Rows past mr repeat the last row: computed, never stored, never out of bounds.
  const float* rows[kTileRows];
  for (int i = 0; i < kTileRows; ++i) rows[i] = a + std::min(i, mr - 1) * lda;
  float32x4_t acc[kTileRows][kVectors];
  for (int i = 0; i < kTileRows; ++i)
    for (int j = 0; j < kVectors; ++j) acc[i][j] = vdupq_n_f32(0.0f);
  int64_t k = 0;
  do {
    float32x4_t b[kVectors];
    for (int j = 0; j < kVectors; ++j) b[j] = vld1q_f32(panel + k * kPanelWidth + 4 * j);
    for (int i = 0; i < kTileRows; ++i) {
      const float ai = rows[i][k];
      for (int j = 0; j < kVectors; ++j) acc[i][j] = vfmaq_n_f32(acc[i][j], b[j], ai);
    }
  } while (++k < kc);
  float32x4_t init[kVectors];
  for (int j = 0; j < kVectors; ++j)
    init[j] = !accumulate && bias ? load_first(bias + 4 * j, nr - 4 * j) : vdupq_n_f32(0.0f);
  for (int i = 0; i < mr; ++i) {
    float* ci = c + i * ldc;
    for (int j = 0; j < kVectors; ++j) {
      if (accumulate) init[j] = load_first(ci + 4 * j, nr - 4 * j);
      store_first(ci + 4 * j, nr - 4 * j, vaddq_f32(init[j], acc[i][j]));
    }
  }
}

// --- exp, softmax, attention, activations ----------------------------------------------

// 2^e for integer lanes -126 <= e <= 127.
inline float32x4_t power_of_two(int32x4_t e) {
  return vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(e, vdupq_n_s32(127)), 23));
}

// exp(a + b), b carrying low-order bits a cannot hold: exp_sum of cpu_kernels_avx2.cpp (the
// same reduction, Taylor polynomial and two-factor scaling).
inline float32x4_t exp_sum(float32x4_t a, float32x4_t b) {
  a = vminq_f32(vdupq_n_f32(100.0f), vmaxq_f32(vdupq_n_f32(-150.0f), a));
  const float32x4_t n = vrndnq_f32(vmulq_f32(vaddq_f32(a, b), vdupq_n_f32(1.44269504088896341f)));
  float32x4_t r = vfmsq_f32(a, n, vdupq_n_f32(0.693145751953125f));  // ln 2 split in two parts
  r = vfmsq_f32(r, n, vdupq_n_f32(1.428606765330187e-06f));
  r = vaddq_f32(r, b);
  static const float kTaylor[8] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};
  float32x4_t p = vdupq_n_f32(kTaylor[0]);
  for (int i = 1; i < 8; ++i) p = vfmaq_f32(vdupq_n_f32(kTaylor[i]), p, r);
  const int32x4_t ni = vcvtq_s32_f32(n);
  const int32x4_t half = vshrq_n_s32(ni, 1);
  return vmulq_f32(vmulq_f32(p, power_of_two(half)), power_of_two(vsubq_s32(ni, half)));
}

inline float32x4_t exp4(float32x4_t a) { return exp_sum(a, vdupq_n_f32(0.0f)); }

void softmax(float* x, int64_t n, float scale) {
  const float32x4_t minus_inf = vdupq_n_f32(-INFINITY);
  float32x4_t mv = minus_inf;
  for (int64_t i = 0; i < n; i += 4)
    mv = vmaxq_f32(mv, vbslq_f32(first_lanes(n - i), vmulq_n_f32(load_first(x + i, n - i), scale), minus_inf));
  const float32x4_t max = vdupq_n_f32(vmaxvq_f32(mv));
  float32x4_t sum = vdupq_n_f32(0.0f);
  for (int64_t i = 0; i < n; i += 4) {
    const float32x4_t e = exp4(vsubq_f32(vmulq_n_f32(load_first(x + i, n - i), scale), max));
    sum = vaddq_f32(sum, vbslq_f32(first_lanes(n - i), e, vdupq_n_f32(0.0f)));
    store_first(x + i, n - i, e);
  }
  const float inv = 1.0f / vaddvq_f32(sum);
  for (int64_t i = 0; i < n; i += 4) store_first(x + i, n - i, vmulq_n_f32(load_first(x + i, n - i), inv));
}

float dot(const float* a, const float* b, int64_t n) {
  float32x4_t acc[2] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
  for (int64_t i = 0; i < n; i += 4)
    acc[(i / 4) % 2] = vfmaq_f32(acc[(i / 4) % 2], load_first(a + i, n - i), load_first(b + i, n - i));
  return vaddvq_f32(vaddq_f32(acc[0], acc[1]));
}

// Each cached K and V row is read from memory once for all G heads: the G dot products (and
// below the G weighted adds) take it from L1.
void attend(const float* q, int64_t G, const float* keys, const float* values, const int64_t* rows, int64_t n,
            int64_t D, float scale, float* scores, float* y) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t g = 0; g < G; ++g) scores[g * n + i] = dot(q + g * D, keys + rows[i], D);
  for (int64_t g = 0; g < G; ++g) softmax(scores + g * n, n, scale);
  std::fill(y, y + G * D, 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    const float* v = values + rows[i];
    for (int64_t g = 0; g < G; ++g) {
      const float p = scores[g * n + i];
      float* yg = y + g * D;
      for (int64_t d = 0; d < D; d += 4)
        store_first(yg + d, D - d, vfmaq_n_f32(load_first(yg + d, D - d), load_first(v + d, D - d), p));
    }
  }
}

// GELU as gelu8 in cpu_kernels_avx2.cpp (same polynomial, same exact split of x^2 / 2).
inline float32x4_t gelu4(float32x4_t x) {
  const float32x4_t ax = vminq_f32(vdupq_n_f32(16.0f), vabsq_f32(x));
  const float32x4_t z = vminq_f32(vdupq_n_f32(10.0f), vmulq_n_f32(ax, 0.70710678118654752f));
  const float32x4_t t = vdivq_f32(vdupq_n_f32(1.0f), vfmaq_n_f32(vdupq_n_f32(1.0f), z, 0.5f));
  const float32x4_t u = vfmaq_n_f32(vdupq_n_f32(-1.4f), t, 2.4f);
  float32x4_t f = vdupq_n_f32(kGeluErfcFit[10]);
  for (int i = 9; i >= 0; --i) f = vfmaq_f32(vdupq_n_f32(kGeluErfcFit[i]), f, u);
  const float32x4_t sq = vmulq_f32(ax, ax);
  const float32x4_t sq_low = vfmaq_f32(vnegq_f32(sq), ax, ax);  // x^2 = sq + sq_low exactly
  const float32x4_t e = vmulq_f32(t, exp_sum(vmulq_n_f32(sq, -0.5f), vfmsq_n_f32(f, sq_low, 0.5f)));
  const float32x4_t one_plus_erf = vbslq_f32(vcltzq_f32(x), e, vsubq_f32(vdupq_n_f32(2.0f), e));
  return vmulq_f32(vmulq_n_f32(x, 0.5f), one_plus_erf);
}

void gelu_erf(float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += 4) store_first(x + i, n - i, gelu4(load_first(x + i, n - i)));
}

void silu_mul(const float* gate, const float* up, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 4) {
    const float32x4_t g = load_first(gate + i, n - i);
    const float32x4_t silu = vdivq_f32(g, vaddq_f32(vdupq_n_f32(1.0f), exp4(vnegq_f32(g))));
    store_first(y + i, n - i, vmulq_f32(silu, load_first(up + i, n - i)));
  }
}

// --- Row norms and RoPE ------------------------------------------------------------------
//
// The sums in double as in the generic kernels (f32 lanes widened two at a time), so only the
// summation order differs from them; a row's last n % 4 values are summed one by one.

// The sum of x[c] - shift (squared when Square) over c < n, in double.
template <bool Square>
double widened_sum(const float* x, int64_t n, double shift) {
  const float64x2_t s = vdupq_n_f64(shift);
  float64x2_t acc[2] = {vdupq_n_f64(0.0), vdupq_n_f64(0.0)};
  int64_t c = 0;
  for (; c + 4 <= n; c += 4) {
    const float32x4_t v = vld1q_f32(x + c);
    const float64x2_t d[2] = {vsubq_f64(vcvt_f64_f32(vget_low_f32(v)), s), vsubq_f64(vcvt_high_f64_f32(v), s)};
    for (int h = 0; h < 2; ++h) acc[h] = Square ? vfmaq_f64(acc[h], d[h], d[h]) : vaddq_f64(acc[h], d[h]);
  }
  double sum = vaddvq_f64(vaddq_f64(acc[0], acc[1]));
  for (; c < n; ++c) sum += Square ? (x[c] - shift) * (x[c] - shift) : x[c] - shift;
  return sum;
}

void rms_norm(const float* x, const float* w, float eps, int64_t n, float* y) {
  const double mean_square = widened_sum<true>(x, n, 0.0) / static_cast<double>(n);
  const float scale = static_cast<float>(1.0 / std::sqrt(mean_square + eps));
  for (int64_t c = 0; c < n; c += 4)
    store_first(y + c, n - c, vmulq_f32(load_first(w + c, n - c), vmulq_n_f32(load_first(x + c, n - c), scale)));
}

void add_rms_norm(float* x, const float* residual, const float* w, float eps, int64_t n, float* y) {
  for (int64_t c = 0; c < n; c += 4)
    store_first(x + c, n - c, vaddq_f32(load_first(x + c, n - c), load_first(residual + c, n - c)));
  rms_norm(x, w, eps, n, y);
}

void layer_norm(const float* x, const float* w, const float* b, float eps, int64_t n, float* y) {
  const double mean = widened_sum<false>(x, n, 0.0) / static_cast<double>(n);
  const double rstd = 1.0 / std::sqrt(widened_sum<true>(x, n, mean) / static_cast<double>(n) + eps);
  const float64x2_t m = vdupq_n_f64(mean), r = vdupq_n_f64(rstd);
  // (x - mean) * rstd * w + b on two lanes in double.
  const auto affine = [&](float32x2_t xv, float32x2_t wv, float32x2_t bv) {
    const float64x2_t normed = vmulq_f64(vsubq_f64(vcvt_f64_f32(xv), m), r);
    return vaddq_f64(vmulq_f64(normed, vcvt_f64_f32(wv)), vcvt_f64_f32(bv));
  };
  int64_t c = 0;
  for (; c + 4 <= n; c += 4) {
    const float32x4_t xv = vld1q_f32(x + c), wv = vld1q_f32(w + c), bv = vld1q_f32(b + c);
    const float32x2_t low = vcvt_f32_f64(affine(vget_low_f32(xv), vget_low_f32(wv), vget_low_f32(bv)));
    vst1q_f32(y + c, vcvt_high_f32_f64(low, affine(vget_high_f32(xv), vget_high_f32(wv), vget_high_f32(bv))));
  }
  for (; c < n; ++c) y[c] = static_cast<float>((x[c] - mean) * rstd * w[c] + b[c]);
}

void rope(const float* x, const float* cos, const float* sin, int64_t half, float* out) {
  for (int64_t i = 0; i < half; i += 4) {
    const int64_t left = half - i;
    const float32x4_t x1 = load_first(x + i, left), x2 = load_first(x + half + i, left);
    const float32x4_t c = load_first(cos + i, left), s = load_first(sin + i, left);
    store_first(out + i, left, vsubq_f32(vmulq_f32(x1, c), vmulq_f32(x2, s)));
    store_first(out + half + i, left, vaddq_f32(vmulq_f32(x2, c), vmulq_f32(x1, s)));
  }
}

// Whole 64-byte lines, four 16-byte loads each, into four 64-bit-lane accumulators.
// As widen_e4m3 in cpu_kernels_avx2.cpp (an E4M3 code in an f16's bit positions is its value
// times 2^-8; ARMv8's f16 -> f32 conversion widens it exactly), 8 codes per step.
void widen_e4m3(const uint8_t* codes, int64_t n, float scale, float* out) {
  const float32x4_t s = vdupq_n_f32(scale), two8 = vdupq_n_f32(256.0f);
  const int16x8_t keep = vdupq_n_s16(static_cast<int16_t>(0xBF80));
  for (int64_t i = 0; i < n; i += 8) {
    uint8_t tail[8] = {};
    const uint8_t* src = codes + i;
    if (n - i < 8) {
      std::memcpy(tail, src, static_cast<size_t>(n - i));
      src = tail;
    }
    const int16x8_t shifted = vreinterpretq_s16_u16(vshll_n_u8(vld1_u8(src), 8));
    const uint16x8_t halves = vreinterpretq_u16_s16(vandq_s16(vshrq_n_s16(shifted, 1), keep));
    const float16x8_t h = vreinterpretq_f16_u16(halves);
    float lanes[8];
    vst1q_f32(lanes, vmulq_f32(vmulq_f32(vcvt_f32_f16(vget_low_f16(h)), two8), s));
    vst1q_f32(lanes + 4, vmulq_f32(vmulq_f32(vcvt_high_f32_f16(h), two8), s));
    std::memcpy(out + i, lanes, static_cast<size_t>(std::min<int64_t>(8, n - i)) * sizeof(float));
  }
}

uint64_t read_stream(const uint8_t* data, int64_t bytes) {
  uint64x2_t acc[4] = {vdupq_n_u64(0), vdupq_n_u64(0), vdupq_n_u64(0), vdupq_n_u64(0)};
  for (int64_t i = 0; i < bytes; i += 64)
    for (int j = 0; j < 4; ++j)
      acc[j] = vaddq_u64(acc[j], vld1q_u64(reinterpret_cast<const uint64_t*>(data + i + 16 * j)));
  const uint64x2_t total = vaddq_u64(vaddq_u64(acc[0], acc[1]), vaddq_u64(acc[2], acc[3]));
  return vgetq_lane_u64(total, 0) + vgetq_lane_u64(total, 1);
}

}  // namespace
#endif  // MOXIN_HAVE_NEON_KERNELS

const Kernels* neon_kernels() {
#if defined(MOXIN_HAVE_NEON_KERNELS)
  static const Kernels table{"neon",      kTileRows, kPanelWidth, kGemvMaxRows, gemv,
                             pack_panels, gemm_tile, attend, softmax, gelu_erf, silu_mul, rms_norm,
                             add_rms_norm, layer_norm, rope, read_stream, widen_e4m3, nullptr};
  static const bool supported = (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0;
  return supported ? &table : nullptr;
#else
  return nullptr;
#endif
}

}  // namespace moxin::cpu
