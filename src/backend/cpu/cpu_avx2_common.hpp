// Small AVX2 + FMA + F16C helpers shared by the AVX2 kernel files (dense and quantized): lane
// reductions, and the quantized GEMVs' conversion of group scales and biases to f32. Include
// only in x86-64 GCC/Clang builds; every function carries its own target attribute, so the
// including file may or may not be compiled under a target pragma.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "core/dtype.hpp"
#include "quant/affine_quant.hpp"

#define MOXIN_AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

namespace moxin::cpu::avx2 {

MOXIN_AVX2_TARGET inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

MOXIN_AVX2_TARGET inline float horizontal_max(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Scales or biases i .. i + count - 1 as f32: eight per step, the rest one by one.
MOXIN_AVX2_TARGET inline void load_scales(const void* data, DType dtype, int64_t i, int64_t count, float* out) {
  const auto* halves = static_cast<const uint16_t*>(data) + i;
  int64_t j = 0;
  for (; j + 8 <= count; j += 8) {
    __m256 v;
    if (dtype == DType::BF16)
      v = _mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(halves + j))), 16));
    else if (dtype == DType::F16)
      v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(halves + j)));
    else
      v = _mm256_loadu_ps(static_cast<const float*>(data) + i + j);
    _mm256_storeu_ps(out + j, v);
  }
  for (; j < count; ++j) out[j] = load_scale(data, dtype, i + j);
}

// sum_j a[j] b[j] for j < count.
MOXIN_AVX2_TARGET inline float dot_f32(const float* a, const float* b, int64_t count) {
  __m256 sum = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= count; j += 8) sum = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), sum);
  float total = horizontal_sum(sum);
  for (; j < count; ++j) total += a[j] * b[j];
  return total;
}

// The quantized GEMVs convert scales and biases to f32 this many groups at a time, ahead of
// the multiply-adds (a load_scale call per group and row costs about as much as the group's
// FMAs).
constexpr int64_t kGroupBlock = 64;

// While a tile streams its rows, the rows this far below it are fetched into the cache at the
// same offset: the next tile's codes arrive in time. Prefetching ahead within the tile's own
// rows does not help (a 2 KB row of 4-bit codes is read before a stream prefetch pays off);
// this took [14336 x 4096] 4-bit from 6.6 to 9.4 GB/s on one Zen 4 core, 8-bit from 11 to 15.
// Into L2 (prefetcht1): once the kernels ran faster (session 8), 8-bit on two cores went from
// 24-27 to 26-30 GB/s with it, 4-bit (avx2-int) from 22-23 to 23-26.
constexpr int64_t kPrefetchRowsAhead = 4;

}  // namespace moxin::cpu::avx2
