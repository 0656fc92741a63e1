// AVX-512 quantized kernels. GEMV: 16 codes widened to f32 lanes per step, four output rows
// per pass sharing each activation load, per-group sums scaled into a per-row accumulator that
// is reduced once per output. Dequantizer: 16 codes to f32 per step for the prefill GEMM.
#include "backend/cpu/cpu_quant_kernels.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MOXIN_HAVE_AVX512_QUANT 1
// GCC 12's intrinsics headers trip -Wmaybe-uninitialized on their own undefined vectors.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

namespace moxin::cpu {

#if defined(MOXIN_HAVE_AVX512_QUANT)
namespace {

#define MOXIN_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))

// R output rows from n and MM activation rows at once, so each x vector loaded feeds R rows'
// FMAs and each decoded code vector MM rows'. Per group: dot = sum(q x) in f32 lanes, then
// acc += scale * dot and bias_part += bias * xsum; scale and bias are converted once per group.
template <int bits, int R, int MM>
MOXIN_AVX512 void gemv_tile(const QuantView& w, int64_t n, const float* xp, const float* xsum, float* y,
                            int64_t ldy) {
  const int64_t K = w.cols, groups = w.groups_per_row(), words = w.words_per_row();
  const __m512i low_nibble = _mm512_set1_epi32(15);
  const uint8_t* codes[R];
  for (int r = 0; r < R; ++r) codes[r] = reinterpret_cast<const uint8_t*>(w.codes + (n + r) * words);
  __m512 acc[R][MM];
  float bias_part[R][MM] = {};
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MM; ++m) acc[r][m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512 dot[R][MM];
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < MM; ++m) dot[r][m] = _mm512_setzero_ps();
    const int64_t k0 = g * w.group_size;
    if constexpr (bits == 8) {
      for (int64_t k = k0; k < k0 + w.group_size; k += 16) {
        __m512 x[MM];
        for (int m = 0; m < MM; ++m) x[m] = _mm512_loadu_ps(xp + m * K + k);
        for (int r = 0; r < R; ++r) {
          const __m512 q = _mm512_cvtepi32_ps(
              _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes[r] + k))));
          for (int m = 0; m < MM; ++m) dot[r][m] = _mm512_fmadd_ps(q, x[m], dot[r][m]);
        }
      }
    } else {
      for (int64_t k = k0; k < k0 + w.group_size; k += 32) {
        __m512 x_even[MM], x_odd[MM];
        for (int m = 0; m < MM; ++m) {
          x_even[m] = _mm512_loadu_ps(xp + m * K + k);
          x_odd[m] = _mm512_loadu_ps(xp + m * K + k + 16);
        }
        for (int r = 0; r < R; ++r) {
          // 16 bytes widened to 16 lanes; low nibbles are the even inputs, high the odd ones.
          const __m512i b =
              _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes[r] + k / 2)));
          const __m512 even = _mm512_cvtepi32_ps(_mm512_and_si512(b, low_nibble));
          const __m512 odd = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
          for (int m = 0; m < MM; ++m) {
            dot[r][m] = _mm512_fmadd_ps(even, x_even[m], dot[r][m]);
            dot[r][m] = _mm512_fmadd_ps(odd, x_odd[m], dot[r][m]);
          }
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m512 scale = _mm512_set1_ps(load_scale(w.scales, w.scale_dtype, (n + r) * groups + g));
      const float bias = load_scale(w.biases, w.scale_dtype, (n + r) * groups + g);
      for (int m = 0; m < MM; ++m) {
        acc[r][m] = _mm512_fmadd_ps(scale, dot[r][m], acc[r][m]);
        bias_part[r][m] += bias * xsum[m * groups + g];
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MM; ++m) y[m * ldy + n + r] = _mm512_reduce_add_ps(acc[r][m]) + bias_part[r][m];
}

// Output rows in fours (one at a time for the tail) and activation rows in pairs.
template <int bits, int MM>
MOXIN_AVX512 void gemv_rows(const QuantView& w, int64_t n0, int64_t n1, const float* xp, const float* xsum,
                            float* y, int64_t ldy) {
  constexpr int kRowsPerPass = 4;
  int64_t n = n0;
  for (; n + kRowsPerPass <= n1; n += kRowsPerPass) gemv_tile<bits, kRowsPerPass, MM>(w, n, xp, xsum, y, ldy);
  for (; n < n1; ++n) gemv_tile<bits, 1, MM>(w, n, xp, xsum, y, ldy);
}

template <int bits>
MOXIN_AVX512 void gemv_bits(const QuantView& w, int64_t n0, int64_t n1, const float* xp, int64_t M,
                            const float* xsum, float* y, int64_t ldy) {
  const int64_t K = w.cols, groups = w.groups_per_row();
  int64_t m = 0;
  for (; m + 2 <= M; m += 2) gemv_rows<bits, 2>(w, n0, n1, xp + m * K, xsum + m * groups, y + m * ldy, ldy);
  if (m < M) gemv_rows<bits, 1>(w, n0, n1, xp + m * K, xsum + m * groups, y + m * ldy, ldy);
}

MOXIN_AVX512 void gemv(const QuantView& w, int64_t n0, int64_t n1, const float* xp, int64_t M,
                       const float* xsum, float* y, int64_t ldy) {
  if (w.bits == 8)
    gemv_bits<8>(w, n0, n1, xp, M, xsum, y, ldy);
  else
    gemv_bits<4>(w, n0, n1, xp, M, xsum, y, ldy);
}

// Dequantizes 16 codes per step in natural order: for 4 bits, lane i takes word i / 8 shifted
// right by 4 * (i % 8); for 8 bits, 16 bytes are widened. Same formula as dequantize_rows.
template <int bits>
MOXIN_AVX512 void dequantize_bits(const QuantView& w, int64_t r0, int64_t r1, float* out) {
  const int64_t K = w.cols, groups = w.groups_per_row(), words = w.words_per_row();
  const __m512i word_of_lane = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i shift_of_lane = _mm512_set_epi32(28, 24, 20, 16, 12, 8, 4, 0, 28, 24, 20, 16, 12, 8, 4, 0);
  const __m512i mask = _mm512_set1_epi32((1 << bits) - 1);
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t* codes = w.codes + r * words;
    float* y = out + (r - r0) * K;
    for (int64_t g = 0; g < groups; ++g) {
      const __m512 scale = _mm512_set1_ps(load_scale(w.scales, w.scale_dtype, r * groups + g));
      const __m512 bias = _mm512_set1_ps(load_scale(w.biases, w.scale_dtype, r * groups + g));
      for (int64_t k = g * w.group_size; k < (g + 1) * w.group_size; k += 16) {
        __m512i q;
        if constexpr (bits == 8) {
          q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + k / 4)));
        } else {
          const __m512i two_words =
              _mm512_castsi128_si512(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + k / 8)));
          q = _mm512_and_si512(_mm512_srlv_epi32(_mm512_permutexvar_epi32(word_of_lane, two_words), shift_of_lane),
                               mask);
        }
        _mm512_storeu_ps(y + k, _mm512_add_ps(_mm512_mul_ps(scale, _mm512_cvtepi32_ps(q)), bias));
      }
    }
  }
}

MOXIN_AVX512 void dequantize(const QuantView& w, int64_t r0, int64_t r1, float* out) {
  if (w.bits == 8)
    dequantize_bits<8>(w, r0, r1, out);
  else
    dequantize_bits<4>(w, r0, r1, out);
}

bool cpu_has_avx512() {
  static const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
  return supported;
}

}  // namespace
#pragma GCC diagnostic pop
#endif

QuantGemvFn quant_gemv_avx512() {
#if defined(MOXIN_HAVE_AVX512_QUANT)
  return cpu_has_avx512() ? gemv : nullptr;
#else
  return nullptr;
#endif
}

QuantDequantizeFn quant_dequantize_avx512() {
#if defined(MOXIN_HAVE_AVX512_QUANT)
  return cpu_has_avx512() ? dequantize : nullptr;
#else
  return nullptr;
#endif
}

}  // namespace moxin::cpu
