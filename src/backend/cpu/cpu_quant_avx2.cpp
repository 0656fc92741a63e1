// AVX2 + FMA (+ F16C) quantized kernels, for x86 CPUs without AVX-512 (most laptops, many
// cloud VMs). GEMV: 8 codes widened to f32 lanes per step, several output rows per pass sharing
// each activation load, per-group sums scaled into a per-row accumulator that is reduced once
// per output; scales and biases converted a block of groups at a time, outside the FMA loop
// (a load_scale call per group and row costs about as much as the group's FMAs). Dequantizer:
// 8 codes to f32 per step for the prefill GEMM. Same arithmetic as the AVX-512 twins
// (cpu_quant_avx512.cpp) at half the width.
#include "backend/cpu/cpu_quant_kernels.hpp"
#include "backend/cpu/cpu_features.hpp"

#include <algorithm>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MOXIN_HAVE_AVX2_QUANT 1
// GCC 12's intrinsics headers trip -Wmaybe-uninitialized on their own undefined vectors.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "backend/cpu/cpu_avx2_common.hpp"
#endif

namespace moxin::cpu {

#if defined(MOXIN_HAVE_AVX2_QUANT)
namespace {

using avx2::dot_f32;
using avx2::horizontal_sum;
using avx2::kGroupBlock;
using avx2::kPrefetchRowsAhead;
using avx2::load_scales;

// 8 bytes widened to 8 i32 lanes.
MOXIN_AVX2_TARGET inline __m256i widen_bytes(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

// R output rows from n and MM activation rows at once, so each x vector loaded feeds R rows'
// FMAs and each decoded code vector MM rows'. Per group: dot = sum(q x) in f32 lanes, then
// acc += scale * dot; the bias terms, sum_g bias_g xsum_g, are one f32 dot per block of groups.
// R * MM is at most 4. Each pair sums into two dots (4-bit: even and odd inputs; 8-bit:
// alternate runs of 8), so that a row's FMAs do not wait on one another's latency: on one Zen 4
// core 4-bit 7.7 -> 9.7 GB/s from memory, 8-bit 14.4 -> 21 from L2.
template <int bits, int R, int MM>
MOXIN_AVX2_TARGET void gemv_tile(const QuantView& w, int64_t n, const float* xp, const float* xsum, float* y,
                          int64_t ldy) {
  const int64_t K = w.cols, groups = w.groups_per_row(), words = w.words_per_row();
  const int64_t group_bytes = w.group_size * bits / 8;
  const __m256i low_nibble = _mm256_set1_epi32(15);
  const uint8_t* codes[R];
  for (int r = 0; r < R; ++r) codes[r] = reinterpret_cast<const uint8_t*>(w.codes + (n + r) * words);
  __m256 acc[R][MM];
  float bias_part[R][MM] = {};
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MM; ++m) acc[r][m] = _mm256_setzero_ps();
  float scales[R][kGroupBlock], biases[R][kGroupBlock];
  for (int64_t g0 = 0; g0 < groups; g0 += kGroupBlock) {
    const int64_t block = std::min(kGroupBlock, groups - g0);
    for (int r = 0; r < R; ++r) {
      load_scales(w.scales, w.scale_dtype, (n + r) * groups + g0, block, scales[r]);
      load_scales(w.biases, w.scale_dtype, (n + r) * groups + g0, block, biases[r]);
      for (int m = 0; m < MM; ++m) bias_part[r][m] += dot_f32(biases[r], xsum + m * groups + g0, block);
    }
    for (int64_t g = g0; g < g0 + block; ++g) {
      // Clamped to the last row: the prefetch then never leaves the codes array.
      for (int r = 0; r < R; ++r) {
        const int64_t ahead = std::min(n + r + kPrefetchRowsAhead, w.rows - 1);
        _mm_prefetch(reinterpret_cast<const char*>(w.codes + ahead * words) + g * group_bytes, _MM_HINT_T1);
      }
      __m256 dot[R][MM], dot2[R][MM];
      for (int r = 0; r < R; ++r)
        for (int m = 0; m < MM; ++m) dot[r][m] = dot2[r][m] = _mm256_setzero_ps();
      const int64_t k0 = g * w.group_size;
      if constexpr (bits == 8) {
        for (int64_t k = k0; k < k0 + w.group_size; k += 16) {
          __m256 x[MM], x2[MM];
          for (int m = 0; m < MM; ++m) {
            x[m] = _mm256_loadu_ps(xp + m * K + k);
            x2[m] = _mm256_loadu_ps(xp + m * K + k + 8);
          }
          for (int r = 0; r < R; ++r) {
            const __m256 q = _mm256_cvtepi32_ps(widen_bytes(codes[r] + k));
            const __m256 q2 = _mm256_cvtepi32_ps(widen_bytes(codes[r] + k + 8));
            for (int m = 0; m < MM; ++m) {
              dot[r][m] = _mm256_fmadd_ps(q, x[m], dot[r][m]);
              dot2[r][m] = _mm256_fmadd_ps(q2, x2[m], dot2[r][m]);
            }
          }
        }
      } else {
        // A 32-input run is 16 bytes; its activations are stored as 16 even then 16 odd inputs.
        // Bytes h .. h + 7 (h = 0, 8) hold even inputs c + h .. and odd inputs c + 16 + h ..
        for (int64_t c = k0; c < k0 + w.group_size; c += 32)
          for (int64_t h = 0; h < 16; h += 8) {
            __m256 x_even[MM], x_odd[MM];
            for (int m = 0; m < MM; ++m) {
              x_even[m] = _mm256_loadu_ps(xp + m * K + c + h);
              x_odd[m] = _mm256_loadu_ps(xp + m * K + c + 16 + h);
            }
            for (int r = 0; r < R; ++r) {
              const __m256i b = widen_bytes(codes[r] + c / 2 + h);
              const __m256 even = _mm256_cvtepi32_ps(_mm256_and_si256(b, low_nibble));
              const __m256 odd = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
              for (int m = 0; m < MM; ++m) {
                dot[r][m] = _mm256_fmadd_ps(even, x_even[m], dot[r][m]);
                dot2[r][m] = _mm256_fmadd_ps(odd, x_odd[m], dot2[r][m]);
              }
            }
          }
      }
      for (int r = 0; r < R; ++r) {
        const __m256 scale = _mm256_broadcast_ss(&scales[r][g - g0]);
        for (int m = 0; m < MM; ++m) acc[r][m] = _mm256_fmadd_ps(scale, _mm256_add_ps(dot[r][m], dot2[r][m]), acc[r][m]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MM; ++m) y[m * ldy + n + r] = horizontal_sum(acc[r][m]) + bias_part[r][m];
}

// Output rows in passes of 4 / MM (one at a time for the tail).
template <int bits, int MM>
MOXIN_AVX2_TARGET void gemv_rows(const QuantView& w, int64_t n0, int64_t n1, const float* xp, const float* xsum,
                          float* y, int64_t ldy) {
  constexpr int kRowsPerPass = 4 / MM;
  int64_t n = n0;
  for (; n + kRowsPerPass <= n1; n += kRowsPerPass) gemv_tile<bits, kRowsPerPass, MM>(w, n, xp, xsum, y, ldy);
  for (; n < n1; ++n) gemv_tile<bits, 1, MM>(w, n, xp, xsum, y, ldy);
}

// Activation rows in pairs (the odd one alone).
template <int bits>
MOXIN_AVX2_TARGET void gemv_bits(const QuantView& w, int64_t n0, int64_t n1, const float* xp, int64_t M,
                          const float* xsum, float* y, int64_t ldy) {
  const int64_t K = w.cols, groups = w.groups_per_row();
  int64_t m = 0;
  for (; m + 2 <= M; m += 2) gemv_rows<bits, 2>(w, n0, n1, xp + m * K, xsum + m * groups, y + m * ldy, ldy);
  if (m < M) gemv_rows<bits, 1>(w, n0, n1, xp + m * K, xsum + m * groups, y + m * ldy, ldy);
}

MOXIN_AVX2_TARGET void gemv(const QuantView& w, int64_t n0, int64_t n1, const float* xp, int64_t M, const float* xsum,
                     float* y, int64_t ldy) {
  if (w.bits == 8)
    gemv_bits<8>(w, n0, n1, xp, M, xsum, y, ldy);
  else
    gemv_bits<4>(w, n0, n1, xp, M, xsum, y, ldy);
}

// Dequantizes 8 codes per step in natural order: for 4 bits, lane i takes one word shifted right
// by 4 i; for 8 bits, 8 bytes are widened. Same formula (a product, then a sum) as dequantize_rows.
template <int bits>
MOXIN_AVX2_TARGET void dequantize_bits(const QuantView& w, int64_t r0, int64_t r1, float* out) {
  const int64_t K = w.cols, groups = w.groups_per_row(), words = w.words_per_row();
  const __m256i shift_of_lane = _mm256_set_epi32(28, 24, 20, 16, 12, 8, 4, 0);
  const __m256i mask = _mm256_set1_epi32((1 << bits) - 1);
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t* codes = w.codes + r * words;
    float* y = out + (r - r0) * K;
    for (int64_t g = 0; g < groups; ++g) {
      const __m256 scale = _mm256_set1_ps(load_scale(w.scales, w.scale_dtype, r * groups + g));
      const __m256 bias = _mm256_set1_ps(load_scale(w.biases, w.scale_dtype, r * groups + g));
      for (int64_t k = g * w.group_size; k < (g + 1) * w.group_size; k += 8) {
        __m256i q;
        if constexpr (bits == 8) {
          q = widen_bytes(reinterpret_cast<const uint8_t*>(codes + k / 4));
        } else {
          const __m256i word = _mm256_set1_epi32(static_cast<int>(codes[k / 8]));
          q = _mm256_and_si256(_mm256_srlv_epi32(word, shift_of_lane), mask);
        }
        _mm256_storeu_ps(y + k, _mm256_add_ps(_mm256_mul_ps(scale, _mm256_cvtepi32_ps(q)), bias));
      }
    }
  }
}

MOXIN_AVX2_TARGET void dequantize(const QuantView& w, int64_t r0, int64_t r1, float* out) {
  if (w.bits == 8)
    dequantize_bits<8>(w, r0, r1, out);
  else
    dequantize_bits<4>(w, r0, r1, out);
}

}  // namespace
#pragma GCC diagnostic pop
#endif

QuantGemvFn quant_gemv_avx2() {
#if defined(MOXIN_HAVE_AVX2_QUANT)
  return cpu_has_avx2_fma_f16c() ? gemv : nullptr;
#else
  return nullptr;
#endif
}

QuantDequantizeFn quant_dequantize_avx2() {
#if defined(MOXIN_HAVE_AVX2_QUANT)
  return cpu_has_avx2_fma_f16c() ? dequantize : nullptr;
#else
  return nullptr;
#endif
}

}  // namespace moxin::cpu
