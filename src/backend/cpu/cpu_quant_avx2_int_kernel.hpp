// AVX2 integer GEMV for 4-bit codes, for x86 CPUs without AVX-512 VNNI: the kernel, included by
// cpu_quant_avx2_int.cpp (AVX2 + FMA + F16C) and cpu_quant_avx_vnni.cpp (the same with AVX-VNNI,
// which defines MOXIN_AVX2_INT_WITH_AVX_VNNI: the multiply-adds of each accumulation become one
// vpdpwssd / vpdpbusd, same integer sums), each after its target pragma; every function has
// internal linkage, so each file keeps its own copy for its own instruction set.
//
// The f32 kernel (cpu_quant_avx2.cpp) spends 14 vector ops per 32 codes and row widening,
// converting and multiplying them; here the codes stay integers and meet the activations in integer
// multiply-adds. The activations are the VNNI kernel's exact 24-bit split per group
// (cpu_quant_split.hpp: q = x 2^(16 - e) rounded once, |q| <= 127 * 65536), held here as a
// 16-bit part H = (q - t) / 256 and an 8-bit part t (the low byte of q, signed): per group,
// D = 256 D_H + D_t, where per half step of 64 inputs
//   D_H: the 64 codes as i16 times H in four vpmaddwd: 16-bit lane j of the 32 code bytes
//        holds inputs 4j .. 4j + 3 as its four nibbles, so masks and shifts within the lane
//        give four vectors of i16 codes (inputs 4j + r, r = 0..3) with no shuffle, each code
//        already times 256 (in the lane's high byte), so the products are 256 D_H,
//   D_t: the 64 codes as bytes times t in two vpmaddubsw, their i16 sum, then one vpmaddwd;
// 256 D_H and D_t share one accumulator (one register per row and activation row fewer, and no
// joining per group: +3% from L2, session 12). Per 64 codes and row that is 7
// multiplies (and per group one conversion and one FMA by scale * 2^(e - 16)) and ~20 vector
// ops in all; on Zen 4 the multiplies, conversions and FMAs share two pipes and shuffles take
// one of them. Measured per core, 4-bit g64 from L2 (BM_QuantGemvPath in_cache): 14.4 GB/s of
// codes with the codes widened by vpunpck{l,h}bw (25 ops), 10.5 for the f32 kernel.
//
// Groups of 32: a half step holds two, each with its own exponent; the accumulator's lanes 0-3
// hold the first group's sums and 4-7 the second's, scaled apart in the one FMA.
//
// Layout of one activation row: 192 bytes per half step h (inputs 64 h .. 64 h + 63): H of
// inputs 4j, then 4j + 1, 4j + 2, 4j + 3 for j = 0..15 (4 x 32 bytes), then t of inputs 2b for
// b = 0..31 (the codes' byte b holds inputs 2b, low nibble, and 2b + 1, high) and t of 2b + 1
// (2 x 32 bytes).
//
// Bounds: |H| <= 32512 and 256 x codes <= 3840, so an i32 lane sums 8 such products per half
// step, <= 9.99e8, and over a group of 128 (two half steps) 256 D_H stays below 2.0e9 < 2^31
// with D_t (<= 2 x 15360 per lane) added; a vpmaddubsw lane sums 2 products of at most
// 15 * 128, the i16 add two such lanes, 7680 < 2^15.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_avx2_common.hpp"
#include "backend/cpu/cpu_quant_kernels.hpp"
#include "backend/cpu/cpu_quant_split.hpp"

namespace moxin::cpu {
namespace {

using avx2::dot_f32;
using avx2::horizontal_max;
using avx2::horizontal_sum;
using avx2::kGroupBlock;
using avx2::kPrefetchRowsAhead;
using avx2::load_scales;

// 64 inputs per half step: 32 bytes of 4-bit codes, one ymm; 192 bytes of split activations.
constexpr int64_t kHalfInputs = 64;
constexpr int64_t kHalfBytes = 192;

// The low bytes of 32 i32 lanes (a, b, c, d in order), each in [-128, 127], as 32 bytes.
inline __m256i pack_bytes(__m256i a, __m256i b, __m256i c, __m256i d) {
  // packs work within 128-bit lanes: dwords come out as a0-3 b0-3 c0-3 d0-3 a4-7 b4-7 c4-7 d4-7.
  const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
  return _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// 16 i32 lanes (a then b, each in order), each in [-32768, 32767], as 16 i16 lanes.
inline __m256i pack_words(__m256i a, __m256i b) {
  // packs work within 128-bit lanes: qwords come out as a0-3 b0-3 a4-7 b4-7.
  return _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), _MM_SHUFFLE(3, 1, 2, 0));
}

// The even- and odd-indexed of 16 lanes (a then b, 8 each in order), each 8 in order.
inline void deinterleave(__m256 a, __m256 b, __m256& even, __m256& odd) {
  // Within 128-bit lanes, then the 64-bit quarters back in order.
  even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))),
                                                _MM_SHUFFLE(3, 1, 2, 0)));
  odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))),
                                               _MM_SHUFFLE(3, 1, 2, 0)));
}

inline void deinterleave(__m256i a, __m256i b, __m256i& even, __m256i& odd) {
  __m256 e, o;
  deinterleave(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), e, o);
  even = _mm256_castps_si256(e);
  odd = _mm256_castps_si256(o);
}

// One half step's split activations (see the file comment) from the integers q of its even and
// odd inputs (2b and 2b + 1), 8 per vector in input order.
void store_half(const __m256i even[4], const __m256i odd[4], int8_t* dst) {
  __m256i h_even[4], h_odd[4], t_even[4], t_odd[4];
  for (int i = 0; i < 4; ++i) {
    t_even[i] = _mm256_srai_epi32(_mm256_slli_epi32(even[i], 24), 24);
    t_odd[i] = _mm256_srai_epi32(_mm256_slli_epi32(odd[i], 24), 24);
    h_even[i] = _mm256_srai_epi32(_mm256_sub_epi32(even[i], t_even[i]), 8);
    h_odd[i] = _mm256_srai_epi32(_mm256_sub_epi32(odd[i], t_odd[i]), 8);
  }
  // H of inputs 4j + r: 4j and 4j + 2 are the even and odd b of the even inputs 2b, 4j + 1 and
  // 4j + 3 those of the odd inputs.
  __m256i h[4][2];
  for (int half = 0; half < 2; ++half) {
    deinterleave(h_even[2 * half], h_even[2 * half + 1], h[0][half], h[2][half]);
    deinterleave(h_odd[2 * half], h_odd[2 * half + 1], h[1][half], h[3][half]);
  }
  auto* out = reinterpret_cast<__m256i*>(dst);
  for (int r = 0; r < 4; ++r) _mm256_storeu_si256(out + r, pack_words(h[r][0], h[r][1]));
  _mm256_storeu_si256(out + 4, pack_bytes(t_even[0], t_even[1], t_even[2], t_even[3]));
  _mm256_storeu_si256(out + 5, pack_bytes(t_odd[0], t_odd[1], t_odd[2], t_odd[3]));
}

// One activation row into the 4-bit split layout; pow2[g] = 2^(e - 16), sums[g] = the sum of
// group g. False when some x is not finite.
bool split_row(const GemvShape& s, int64_t group_size, const float* x, int8_t* parts, float* pow2, float* sums) {
  const __m256 infinity = _mm256_set1_ps(INFINITY);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t g = 0; g < s.groups; ++g) {
    const float* xg = x + g * group_size;
    __m256 amax = _mm256_setzero_ps(), sum = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    for (int64_t k = 0; k < group_size; k += 8) {
      const __m256 v = _mm256_loadu_ps(xg + k);
      const __m256 magnitude = _mm256_andnot_ps(sign, v);
      bad = _mm256_or_ps(bad, _mm256_cmp_ps(magnitude, infinity, _CMP_NLT_UQ));  // inf or NaN
      amax = _mm256_max_ps(amax, magnitude);
      sum = _mm256_add_ps(sum, v);
    }
    if (_mm256_movemask_ps(bad)) return false;
    const int e = split_exponent(horizontal_max(amax));
    pow2[g] = std::ldexp(1.0f, e - 16);
    sums[g] = horizontal_sum(sum);
  }
  // Half steps of 64 inputs: in groups of 32 a half step holds two groups, each scaled by its
  // own 2^(16 - e) = 1 / pow2 (exact: a power of two), and with an odd count of them the last
  // half step holds one (zeros after it).
  const int64_t cols = s.groups * group_size;
  for (int64_t k = 0; k < cols; k += kHalfInputs) {
    // Inputs 2b go with the low nibbles, 2b + 1 with the high ones.
    __m256i even[4], odd[4];
    for (int i = 0; i < 4; ++i) {
      const int64_t k0 = k + 16 * i;
      __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
      if (k0 < cols) {
        // Power-of-two scaling is exact; one rounding to the nearest integer.
        const __m256 to_fixed = _mm256_set1_ps(1.0f / pow2[k0 / group_size]);
        a = _mm256_mul_ps(_mm256_loadu_ps(x + k0), to_fixed);
        b = _mm256_mul_ps(_mm256_loadu_ps(x + k0 + 8), to_fixed);
      }
      __m256 e_lanes, o_lanes;
      deinterleave(a, b, e_lanes, o_lanes);
      even[i] = _mm256_cvtps_epi32(e_lanes);
      odd[i] = _mm256_cvtps_epi32(o_lanes);
    }
    store_half(even, odd, parts + k / kHalfInputs * kHalfBytes);
  }
  return true;
}

// R weight rows from n against MM activation rows; a group is kHalves half steps, or a half
// step is kGroupsPerHalf = 2 groups (of 32: the accumulator's lanes 0-3 sum the first, 4-7 the
// second, as lane j sums inputs 8j .. 8j + 7).
template <int R, int MM, int kHalves, int kGroupsPerHalf>
void gemv_tile(const QuantView& w, const GemvShape& s, int64_t n, const int8_t* parts, const float* pow2,
               const float* sums, float* y, int64_t ldy) {
  const int64_t row_bytes = w.cols / 2;
  const uint8_t* codes[R];
  for (int r = 0; r < R; ++r) codes[r] = reinterpret_cast<const uint8_t*>(w.codes) + (n + r) * row_bytes;
  const __m256i low_nibbles = _mm256_set1_epi8(15);
  const __m256i high_bytes = _mm256_set1_epi16(static_cast<int16_t>(0xFF00));
#if !defined(MOXIN_AVX2_INT_WITH_AVX_VNNI)
  const __m256i ones = _mm256_set1_epi16(1);
#endif
  __m256 acc[R][MM];
  float bias_part[R][MM] = {};
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MM; ++m) acc[r][m] = _mm256_setzero_ps();
  float scales[R][kGroupBlock], biases[R][kGroupBlock];
  for (int64_t g0 = 0; g0 < s.groups; g0 += kGroupBlock) {
    const int64_t block = std::min(kGroupBlock, s.groups - g0);
    for (int r = 0; r < R; ++r) {
      load_scales(w.scales, w.scale_dtype, (n + r) * s.groups + g0, block, scales[r]);
      load_scales(w.biases, w.scale_dtype, (n + r) * s.groups + g0, block, biases[r]);
      for (int m = 0; m < MM; ++m) bias_part[r][m] += dot_f32(biases[r], sums + m * s.group_stride + g0, block);
    }
    for (int64_t g = g0; g < g0 + block; g += kGroupsPerHalf) {
      // With an odd count of groups of 32 the last half step has one: 16 bytes of codes.
      const bool one_group_left = kGroupsPerHalf == 2 && g + 1 == g0 + block;
      __m256i d[R][MM];
      for (int r = 0; r < R; ++r)
        for (int m = 0; m < MM; ++m) d[r][m] = _mm256_setzero_si256();
      for (int j = 0; j < kHalves; ++j) {
        const int64_t half = g * kHalves / kGroupsPerHalf + j;
        const int64_t operand = half * kHalfBytes;
        for (int r = 0; r < R; ++r) {
          const uint8_t* p = codes[r] + half * 32;
          // Clamped to the last row: the prefetch then never leaves the codes array.
          const int64_t ahead = std::min(kPrefetchRowsAhead, w.rows - 1 - n - r);
          _mm_prefetch(reinterpret_cast<const char*>(p + ahead * row_bytes), _MM_HINT_T1);
          const __m256i raw = one_group_left
                                  ? _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))
                                  : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
          const __m256i lo = _mm256_and_si256(raw, low_nibbles);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low_nibbles);
          // 256 x the codes of inputs 4j, 4j + 1, 4j + 2, 4j + 3 as i16 in lane j: their products
          // with H are 256 D_H's, so D_t adds into the same accumulator.
          const __m256i wide[4] = {_mm256_slli_epi16(lo, 8), _mm256_slli_epi16(hi, 8),
                                   _mm256_and_si256(lo, high_bytes), _mm256_and_si256(hi, high_bytes)};
          for (int m = 0; m < MM; ++m) {
            const auto* a = reinterpret_cast<const __m256i*>(parts + m * s.part_bytes + operand);
#if defined(MOXIN_AVX2_INT_WITH_AVX_VNNI)
            // vpdpwssd and vpdpbusd add the same exact integer sums in one instruction each (no
            // lane overflows or saturates within the bounds above): the bits of the AVX2 path.
            for (int i = 0; i < 4; ++i) d[r][m] = _mm256_dpwssd_avx_epi32(d[r][m], wide[i], _mm256_load_si256(a + i));
            d[r][m] = _mm256_dpbusd_avx_epi32(d[r][m], lo, _mm256_load_si256(a + 4));
            d[r][m] = _mm256_dpbusd_avx_epi32(d[r][m], hi, _mm256_load_si256(a + 5));
#else
            for (int i = 0; i < 4; ++i)
              d[r][m] = _mm256_add_epi32(d[r][m], _mm256_madd_epi16(wide[i], _mm256_load_si256(a + i)));
            const __m256i t_pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_load_si256(a + 4)),
                                                     _mm256_maddubs_epi16(hi, _mm256_load_si256(a + 5)));
            d[r][m] = _mm256_add_epi32(d[r][m], _mm256_madd_epi16(t_pairs, ones));
#endif
          }
        }
      }
      for (int r = 0; r < R; ++r)
        for (int m = 0; m < MM; ++m) {
          const float first = scales[r][g - g0] * pow2[m * s.group_stride + g];
          __m256 scale = _mm256_set1_ps(first);
          if constexpr (kGroupsPerHalf == 2) {
            const float second = one_group_left ? 0.0f : scales[r][g + 1 - g0] * pow2[m * s.group_stride + g + 1];
            scale = _mm256_setr_m128(_mm_set1_ps(first), _mm_set1_ps(second));
          }
          acc[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[r][m]), scale, acc[r][m]);
        }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MM; ++m) y[m * ldy + n + r] = horizontal_sum(acc[r][m]) + bias_part[r][m];
}

// Two weight rows per tile: with four, the accumulators next to the six activation operands
// outgrow the 16 registers (4-bit [128 x 4096] from L2 on one Zen 4 core: 13.0 GB/s at two
// rows, 10.4 at four, 11.2 at one).
constexpr int kTileRows = 2;

template <int kHalves, int kGroupsPerHalf>
void gemv_rows(const QuantView& w, const GemvShape& s, int64_t n0, int64_t n1, int64_t M, const int8_t* parts,
               const float* pow2, const float* sums, float* y, int64_t ldy) {
  for_each_tile<kTileRows>(n0, n1, M, w.cols / 2, [&](auto rows, auto pair, int64_t n, int64_t m) {
    gemv_tile<decltype(rows)::value, decltype(pair)::value, kHalves, kGroupsPerHalf>(
        w, s, n, parts + m * s.part_bytes, pow2 + m * s.group_stride, sums + m * s.group_stride, y + m * ldy, ldy);
  });
}


// The whole GEMV (the entry points check the CPU first): M activation rows split, then the
// rows of W over the pool's threads. False, with nothing written, when some x is not finite.
bool run_avx2_int_gemv(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const QuantView& w, float* y,
                       int64_t ldy) {
  const GemvShape s(w);
  SplitActivations split(s, M);
  return run_split_gemv(
      pool, M, x, ldx, w, s, split, kTileRows,
      [&](const float* row, int8_t* parts, float* pow2, float* sums) {
        return split_row(s, w.group_size, row, parts, pow2, sums);
      },
      [&](int64_t t0, int64_t t1) {
        const int64_t n0 = t0 * kTileRows, n1 = std::min(w.rows, t1 * kTileRows);
        if (w.group_size == 32)
          gemv_rows<1, 2>(w, s, n0, n1, M, split.parts, split.pow2.data(), split.sums.data(), y, ldy);
        else if (w.group_size == 64)
          gemv_rows<1, 1>(w, s, n0, n1, M, split.parts, split.pow2.data(), split.sums.data(), y, ldy);
        else
          gemv_rows<2, 1>(w, s, n0, n1, M, split.parts, split.pow2.data(), split.sums.data(), y, ldy);
      });
}

}  // namespace
}  // namespace moxin::cpu
