// AVX-512 quantized GEMV: 16 codes widened to f32 lanes per step, one FMA per activation row,
// per-group sums scaled into a per-row accumulator that is reduced once per output.
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

// Rows n0..n1 for `bits`-bit codes; see QuantGemvFn for the layout of xp and xsum.
template <int bits>
MOXIN_AVX512 void gemv_rows(const QuantView& w, int64_t n0, int64_t n1, const float* xp, int64_t M,
                            const float* xsum, float* y, int64_t ldy) {
  const int64_t K = w.cols, groups = w.groups_per_row(), words = w.words_per_row();
  const __m512i low_nibble = _mm512_set1_epi32(15);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* codes = reinterpret_cast<const uint8_t*>(w.codes + n * words);
    __m512 acc[kQuantGemvMaxRows];
    float bias_part[kQuantGemvMaxRows] = {};
    for (int64_t m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      __m512 dot[kQuantGemvMaxRows];
      for (int64_t m = 0; m < M; ++m) dot[m] = _mm512_setzero_ps();
      const int64_t k0 = g * w.group_size;
      if constexpr (bits == 8) {
        for (int64_t k = k0; k < k0 + w.group_size; k += 16) {
          const __m512 q = _mm512_cvtepi32_ps(
              _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + k))));
          for (int64_t m = 0; m < M; ++m) dot[m] = _mm512_fmadd_ps(q, _mm512_loadu_ps(xp + m * K + k), dot[m]);
        }
      } else {
        for (int64_t k = k0; k < k0 + w.group_size; k += 32) {
          const __m512i b =
              _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + k / 2)));
          const __m512 even = _mm512_cvtepi32_ps(_mm512_and_si512(b, low_nibble));
          const __m512 odd = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
          for (int64_t m = 0; m < M; ++m) {
            dot[m] = _mm512_fmadd_ps(even, _mm512_loadu_ps(xp + m * K + k), dot[m]);
            dot[m] = _mm512_fmadd_ps(odd, _mm512_loadu_ps(xp + m * K + k + 16), dot[m]);
          }
        }
      }
      const float scale = load_scale(w.scales, w.scale_dtype, n * groups + g);
      const float bias = load_scale(w.biases, w.scale_dtype, n * groups + g);
      const __m512 s = _mm512_set1_ps(scale);
      for (int64_t m = 0; m < M; ++m) {
        acc[m] = _mm512_fmadd_ps(s, dot[m], acc[m]);
        bias_part[m] += bias * xsum[m * groups + g];
      }
    }
    for (int64_t m = 0; m < M; ++m) y[m * ldy + n] = _mm512_reduce_add_ps(acc[m]) + bias_part[m];
  }
}

MOXIN_AVX512 void gemv(const QuantView& w, int64_t n0, int64_t n1, const float* xp, int64_t M,
                       const float* xsum, float* y, int64_t ldy) {
  if (w.bits == 8)
    gemv_rows<8>(w, n0, n1, xp, M, xsum, y, ldy);
  else
    gemv_rows<4>(w, n0, n1, xp, M, xsum, y, ldy);
}

}  // namespace
#pragma GCC diagnostic pop
#endif

QuantGemvFn quant_gemv_avx512() {
#if defined(MOXIN_HAVE_AVX512_QUANT)
  static const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
  return supported ? gemv : nullptr;
#else
  return nullptr;
#endif
}

}  // namespace moxin::cpu
