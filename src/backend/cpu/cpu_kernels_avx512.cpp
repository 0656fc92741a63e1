// AVX-512 kernels (F + BW + VL), compiled for that ISA through a target pragma so the rest
// of the program stays baseline x86-64; avx512_kernels() hands them out only when the CPU
// (and the OS, for the zmm state) supports them. Weights go bf16 -> f32 by a 16-bit shift,
// f16 -> f32 by vcvtph2ps; activations and accumulators stay f32 throughout.
#include "backend/cpu/cpu_kernels.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MOXIN_HAVE_AVX512_KERNELS 1
#include <immintrin.h>

#include <algorithm>

#include "core/check.hpp"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,fma,f16c")
// GCC 12's intrinsics use _mm512_undefined_*() as pass-through operands, which its own
// -Wuninitialized flags once they are inlined (GCC bug 105593, fixed in 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif

namespace moxin::cpu {

#if defined(MOXIN_HAVE_AVX512_KERNELS)
namespace {

// Loads 16 consecutive weights as f32 (all, or the first lanes of `mask` with zeros after).
struct Bf16Weights {
  using T = uint16_t;
  static __m512 widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static __m512 load(const T* p) { return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static __m512 load(const T* p, __mmask16 mask) { return widen(_mm256_maskz_loadu_epi16(mask, p)); }
};

struct F16Weights {
  using T = uint16_t;
  static __m512 load(const T* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static __m512 load(const T* p, __mmask16 mask) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p)); }
};

struct F32Weights {
  using T = float;
  static __m512 load(const T* p) { return _mm512_loadu_ps(p); }
  static __m512 load(const T* p, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, p); }
};

inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

// Sum of the 16 lanes (GCC 12's _mm512_reduce_add_ps trips -Wmaybe-uninitialized).
inline float horizontal_sum(__m512 v) {
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  v = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_cvtss_f32(v);
}

// --- GEMV: R weight rows x MG activation rows, one pass over K --------------------------

template <class L, int R, int MG>
void gemv_tile(const typename L::T* w, int64_t ld, int64_t K, const float* x, int64_t ldx,
               const float* bias, float* y, int64_t ldy) {
  __m512 acc[R][MG];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MG; ++m) acc[r][m] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 xv[MG];
    for (int m = 0; m < MG; ++m) xv[m] = _mm512_loadu_ps(x + m * ldx + k);
    for (int r = 0; r < R; ++r) {
      const __m512 wv = L::load(w + r * ld + k);
      for (int m = 0; m < MG; ++m) acc[r][m] = _mm512_fmadd_ps(wv, xv[m], acc[r][m]);
    }
  }
  if (k < K) {
    const __mmask16 mask = first_lanes(K - k);
    __m512 xv[MG];
    for (int m = 0; m < MG; ++m) xv[m] = _mm512_maskz_loadu_ps(mask, x + m * ldx + k);
    for (int r = 0; r < R; ++r) {
      const __m512 wv = L::load(w + r * ld + k, mask);
      for (int m = 0; m < MG; ++m) acc[r][m] = _mm512_fmadd_ps(wv, xv[m], acc[r][m]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const float b = bias ? bias[r] : 0.0f;
    for (int m = 0; m < MG; ++m) y[m * ldy + r] = b + horizontal_sum(acc[r][m]);
  }
}

template <class L, int R>
void gemv_rows(const typename L::T* w, int64_t ld, int64_t K, const float* x, int64_t ldx,
               int64_t M, const float* bias, float* y, int64_t ldy) {
  for (int64_t m0 = 0; m0 < M; m0 += 4) {
    const float* xm = x + m0 * ldx;
    float* ym = y + m0 * ldy;
    switch (std::min<int64_t>(4, M - m0)) {
      case 1: gemv_tile<L, R, 1>(w, ld, K, xm, ldx, bias, ym, ldy); break;
      case 2: gemv_tile<L, R, 2>(w, ld, K, xm, ldx, bias, ym, ldy); break;
      case 3: gemv_tile<L, R, 3>(w, ld, K, xm, ldx, bias, ym, ldy); break;
      default: gemv_tile<L, R, 4>(w, ld, K, xm, ldx, bias, ym, ldy); break;
    }
  }
}

template <class L>
void gemv_typed(const WeightView& w, int64_t n0, int64_t n1, const float* x, int64_t ldx,
                int64_t M, const float* bias, float* y, int64_t ldy) {
  const auto* base = static_cast<const typename L::T*>(w.data);
  constexpr int kRows = 4;
  int64_t n = n0;
  for (; n + kRows <= n1; n += kRows)
    gemv_rows<L, kRows>(base + n * w.ld, w.ld, w.cols, x, ldx, M, bias ? bias + n : nullptr, y + n, ldy);
  for (; n < n1; ++n)
    gemv_rows<L, 1>(base + n * w.ld, w.ld, w.cols, x, ldx, M, bias ? bias + n : nullptr, y + n, ldy);
}

void gemv(const WeightView& w, int64_t n0, int64_t n1, const float* x, int64_t ldx, int64_t M,
          const float* bias, float* y, int64_t ldy) {
  switch (w.dtype) {
    case DType::BF16: return gemv_typed<Bf16Weights>(w, n0, n1, x, ldx, M, bias, y, ldy);
    case DType::F16: return gemv_typed<F16Weights>(w, n0, n1, x, ldx, M, bias, y, ldy);
    case DType::F32: return gemv_typed<F32Weights>(w, n0, n1, x, ldx, M, bias, y, ldy);
    default: fail("[cpu] matmul: weights of dtype ", dtype_name(w.dtype), " are not supported");
  }
}

// --- GEMM panels: 16 x 16 blocks converted, transposed in registers, stored k-major ------

// In: r[i] = row i (16 columns). Out: r[j] = column j (16 rows).
void transpose16x16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  // u[4q + j], lane L: rows 4q..4q+3 of column 4L + j.
  __m512 u[16];
  for (int q = 0; q < 4; ++q) {
    const __m512* s = t + 4 * q;
    u[4 * q + 0] = _mm512_shuffle_ps(s[0], s[2], 0x44);
    u[4 * q + 1] = _mm512_shuffle_ps(s[0], s[2], 0xee);
    u[4 * q + 2] = _mm512_shuffle_ps(s[1], s[3], 0x44);
    u[4 * q + 3] = _mm512_shuffle_ps(s[1], s[3], 0xee);
  }
  for (int j = 0; j < 4; ++j) {
    const __m512 even01 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88);
    const __m512 odd01 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xdd);
    const __m512 even23 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
    const __m512 odd23 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xdd);
    r[j] = _mm512_shuffle_f32x4(even01, even23, 0x88);
    r[4 + j] = _mm512_shuffle_f32x4(odd01, odd23, 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(even01, even23, 0xdd);
    r[12 + j] = _mm512_shuffle_f32x4(odd01, odd23, 0xdd);
  }
}

template <class L>
void pack_panels_typed(const WeightView& w, int64_t n0, int64_t nc, int64_t k0, int64_t kc,
                       float* panels) {
  const auto* base = static_cast<const typename L::T*>(w.data);
  const int64_t num_panels = (nc + kGemmNR - 1) / kGemmNR;
  for (int64_t p = 0; p < num_panels; ++p) {
    float* panel = panels + p * kc * kGemmNR;
    for (int half = 0; half < kGemmNR / 16; ++half) {
      const int64_t first_row = p * kGemmNR + half * 16;
      const int64_t valid_rows = std::clamp<int64_t>(nc - first_row, 0, 16);
      for (int64_t k = 0; k < kc; k += 16) {
        const int64_t width = std::min<int64_t>(16, kc - k);
        const __mmask16 mask = first_lanes(width);
        __m512 r[16];
        for (int i = 0; i < 16; ++i) {
          const typename L::T* src = base + (n0 + first_row + i) * w.ld + k0 + k;
          r[i] = i >= valid_rows ? _mm512_setzero_ps() : width == 16 ? L::load(src) : L::load(src, mask);
        }
        transpose16x16(r);
        for (int64_t j = 0; j < width; ++j) _mm512_storeu_ps(panel + (k + j) * kGemmNR + half * 16, r[j]);
      }
    }
  }
}

void pack_panels(const WeightView& w, int64_t n0, int64_t nc, int64_t k0, int64_t kc, float* panels) {
  switch (w.dtype) {
    case DType::BF16: return pack_panels_typed<Bf16Weights>(w, n0, nc, k0, kc, panels);
    case DType::F16: return pack_panels_typed<F16Weights>(w, n0, nc, k0, kc, panels);
    case DType::F32: return pack_panels_typed<F32Weights>(w, n0, nc, k0, kc, panels);
    default: fail("[cpu] matmul: weights of dtype ", dtype_name(w.dtype), " are not supported");
  }
}

// --- GEMM register tile: 8 rows x 32 columns = 16 zmm accumulators ----------------------

void gemm_tile(int64_t kc, const float* a, int64_t lda, int mr, const float* panel, int nr,
               float* c, int64_t ldc, const float* bias, bool accumulate) {
  static_assert(kGemmMR == 8 && kGemmNR == 32, "the tile below is written for 8 x 32");
  // Rows past mr repeat the last row: computed, never stored, never out of bounds.
  const float* rows[8];
  for (int i = 0; i < 8; ++i) rows[i] = a + std::min(i, mr - 1) * lda;
  __m512 acc[8][2];
  for (int i = 0; i < 8; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_loadu_ps(panel + k * kGemmNR);
    const __m512 b1 = _mm512_loadu_ps(panel + k * kGemmNR + 16);
    for (int i = 0; i < 8; ++i) {
      const __m512 ai = _mm512_set1_ps(rows[i][k]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
    }
  }
  const __mmask16 mask0 = first_lanes(nr);
  const __mmask16 mask1 = first_lanes(std::max(0, nr - 16));
  __m512 init0 = _mm512_setzero_ps(), init1 = _mm512_setzero_ps();
  if (!accumulate && bias) {
    init0 = _mm512_maskz_loadu_ps(mask0, bias);
    init1 = _mm512_maskz_loadu_ps(mask1, bias + 16);
  }
  for (int i = 0; i < mr; ++i) {
    float* ci = c + i * ldc;
    if (accumulate) {
      init0 = _mm512_maskz_loadu_ps(mask0, ci);
      init1 = _mm512_maskz_loadu_ps(mask1, ci + 16);
    }
    _mm512_mask_storeu_ps(ci, mask0, _mm512_add_ps(init0, acc[i][0]));
    _mm512_mask_storeu_ps(ci + 16, mask1, _mm512_add_ps(init1, acc[i][1]));
  }
}

// --- vector helpers for attention ------------------------------------------------------

float dot(const float* a, const float* b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i < n; i += 16) {
    const __mmask16 mask = first_lanes(n - i);
    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + i), _mm512_maskz_loadu_ps(mask, b + i), acc0);
  }
  return horizontal_sum(_mm512_add_ps(acc0, acc1));
}

void axpy(float alpha, const float* x, float* y, int64_t n) {
  const __m512 av = _mm512_set1_ps(alpha);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = first_lanes(n - i);
    const __m512 yv = _mm512_maskz_loadu_ps(mask, y + i);
    _mm512_mask_storeu_ps(y + i, mask, _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(mask, x + i), yv));
  }
}

}  // namespace
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
#endif  // MOXIN_HAVE_AVX512_KERNELS

// Compiled for the baseline ISA: it runs before anyone knows whether AVX-512 is there.

const Kernels* avx512_kernels() {
#if defined(MOXIN_HAVE_AVX512_KERNELS)
  static const Kernels table{"avx512", gemv, pack_panels, gemm_tile, dot, axpy};
  static const bool supported = __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl");
  return supported ? &table : nullptr;
#else
  return nullptr;
#endif
}

}  // namespace moxin::cpu

