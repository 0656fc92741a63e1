// The AVX2 integer 4-bit GEMV (cpu_quant_avx2_int_kernel.hpp), and an 8-bit one below, on CPUs with AVX-VNNI, the 256-bit
// VEX encoding of the VNNI dot products that Intel's client cores since Alder Lake and its
// E-core Xeons have without AVX-512. Each accumulation's multiply-adds become one instruction:
// vpdpwssd for the four 16-bit products (vpmaddwd + vpaddd before), two vpdpbusd for the 8-bit
// part (two vpmaddubsw, an i16 add, a vpmaddwd and a vpaddd before): per 64 codes and row 6
// dot-product instructions instead of 7 multiplies and 6 adds. The integer sums are the same, so
// the results are the AVX2 path's bit for bit. Measured on the one AVX-VNNI machine at hand, a
// 2-core Xeon VM that also has AVX-512 VNNI (BM_QuantGemvPath, 4-bit g64 [14336 x 4096]): one core
// from L2 12.2 -> 13.0 GB/s, two threads from memory 19.5-20.0 -> 19.9-20.6 GB/s (within the VM's
// noise); three weight rows per tile instead of two, with the registers this frees, no better.
#include "backend/cpu/cpu_quant_kernels.hpp"
#include "backend/cpu/cpu_features.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MOXIN_HAVE_AVX_VNNI_QUANT 1
#define MOXIN_AVX2_INT_WITH_AVX_VNNI 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avxvnni"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avxvnni")
// GCC 12's intrinsics trip -Wmaybe-uninitialized on their own undefined vectors (bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "backend/cpu/cpu_quant_avx2_int_kernel.hpp"  // (after the pragmas: compiled for this file's target)

#include <cstring>

namespace moxin::cpu {
namespace {

// 8-bit codes: the AVX-512 VNNI kernel's three signed bytes per input (cpu_quant_split.hpp's
// 8-bit step layout: h, l and t parts of a step part_gap apart, inputs in order) meet 32 codes
// in each 256-bit vpdpbusd. Per group and pair (weight row, activation row), D_h and
// 256 D_l + D_t in two i32 accumulators (a lane sums 4 products of at most 255 * 128 per 32
// inputs: D_h * 65536 would not fit, 256 D_l + D_t over 128 inputs stays below 2^27), then one
// conversion each and one FMA by scale * 2^(e - 16). AVX2 without VNNI has no exact 8-bit
// multiply-add (vpmaddubsw saturates 255 * 127 * 2) and keeps the f32 kernel.
bool split_row8(const GemvShape& s, int64_t group_size, const float* x, int8_t* parts, float* pow2, float* sums) {
  if (!split_groups(s, group_size, x, pow2, sums)) return false;
  if (s.full_steps < s.steps) std::memset(parts + s.full_steps * s.step_bytes, 0, static_cast<size_t>(s.step_bytes));
  const int64_t cols = s.groups * group_size;
  for (int64_t k = 0; k < cols; k += 32) {  // groups of 32, 64 or 128: a run of 32 inputs is in one group
    // Power-of-two scaling is exact; one rounding to the nearest integer.
    const __m256 to_fixed = _mm256_set1_ps(1.0f / pow2[k / group_size]);
    __m256i h[4], l[4], t[4];
    for (int i = 0; i < 4; ++i) {
      const __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8 * i), to_fixed));
      t[i] = _mm256_srai_epi32(_mm256_slli_epi32(q, 24), 24);
      const __m256i rest = _mm256_srai_epi32(_mm256_sub_epi32(q, t[i]), 8);
      l[i] = _mm256_srai_epi32(_mm256_slli_epi32(rest, 24), 24);
      h[i] = _mm256_srai_epi32(_mm256_sub_epi32(rest, l[i]), 8);
    }
    int8_t* dst = parts + k / s.step.inputs * s.step_bytes + k % s.step.inputs;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), pack_bytes(h[0], h[1], h[2], h[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + s.part_gap), pack_bytes(l[0], l[1], l[2], l[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 2 * s.part_gap), pack_bytes(t[0], t[1], t[2], t[3]));
  }
  return true;
}

// R weight rows from n against MM activation rows, 8-bit codes, groups of kChunks x 32 inputs.
template <int R, int MM, int kChunks>
void gemv8_tile(const QuantView& w, const GemvShape& s, int64_t n, const int8_t* parts, const float* pow2,
                const float* sums, float* y, int64_t ldy) {
  const int64_t row_bytes = w.cols;
  const uint8_t* codes[R];
  for (int r = 0; r < R; ++r) codes[r] = reinterpret_cast<const uint8_t*>(w.codes) + (n + r) * row_bytes;
  const __m256 two_16 = _mm256_set1_ps(65536.0f);
  __m256 acc[R][MM];
  float bias_part[R][MM] = {};
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MM; ++m) acc[r][m] = _mm256_setzero_ps();
  float scales[R][kGroupBlock], biases[R][kGroupBlock];
  // The split activations of inputs [k, k + 32) of activation row m, part 0 (h), 1 (l) or 2 (t).
  const auto part = [&](int m, int64_t k, int which) {
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(parts + m * s.part_bytes + k / s.step.inputs * s.step_bytes +
                                                              k % s.step.inputs + which * s.part_gap));
  };
  for (int64_t g0 = 0; g0 < s.groups; g0 += kGroupBlock) {
    const int64_t block = std::min(kGroupBlock, s.groups - g0);
    for (int r = 0; r < R; ++r) {
      load_scales(w.scales, w.scale_dtype, (n + r) * s.groups + g0, block, scales[r]);
      load_scales(w.biases, w.scale_dtype, (n + r) * s.groups + g0, block, biases[r]);
      for (int m = 0; m < MM; ++m) bias_part[r][m] += dot_f32(biases[r], sums + m * s.group_stride + g0, block);
    }
    for (int64_t g = g0; g < g0 + block; ++g) {
      __m256i high[R][MM], low[R][MM];
      for (int r = 0; r < R; ++r)
        for (int m = 0; m < MM; ++m) high[r][m] = low[r][m] = _mm256_setzero_si256();
      const int64_t k0 = g * kChunks * 32;
      for (int j = 0; j < kChunks; ++j)
        for (int r = 0; r < R; ++r) {
          const uint8_t* p = codes[r] + k0 + 32 * j;
          // Clamped to the last row: the prefetch then never leaves the codes array.
          const int64_t ahead = std::min(kPrefetchRowsAhead, w.rows - 1 - n - r);
          _mm_prefetch(reinterpret_cast<const char*>(p + ahead * row_bytes), _MM_HINT_T1);
          const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
          for (int m = 0; m < MM; ++m) {
            high[r][m] = _mm256_dpbusd_avx_epi32(high[r][m], c, part(m, k0 + 32 * j, 0));
            low[r][m] = _mm256_dpbusd_avx_epi32(low[r][m], c, part(m, k0 + 32 * j, 1));
          }
        }
      for (int r = 0; r < R; ++r)
        for (int m = 0; m < MM; ++m) low[r][m] = _mm256_slli_epi32(low[r][m], 8);
      for (int j = 0; j < kChunks; ++j)
        for (int r = 0; r < R; ++r) {  // the codes again, from L1
          const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes[r] + k0 + 32 * j));
          for (int m = 0; m < MM; ++m) low[r][m] = _mm256_dpbusd_avx_epi32(low[r][m], c, part(m, k0 + 32 * j, 2));
        }
      for (int r = 0; r < R; ++r)
        for (int m = 0; m < MM; ++m) {
          const __m256 dot = _mm256_fmadd_ps(_mm256_cvtepi32_ps(high[r][m]), two_16, _mm256_cvtepi32_ps(low[r][m]));
          acc[r][m] = _mm256_fmadd_ps(dot, _mm256_set1_ps(scales[r][g - g0] * pow2[m * s.group_stride + g]), acc[r][m]);
        }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MM; ++m) y[m * ldy + n + r] = horizontal_sum(acc[r][m]) + bias_part[r][m];
}

template <int kChunks>
void gemv8_rows(const QuantView& w, const GemvShape& s, int64_t n0, int64_t n1, int64_t M, const int8_t* parts,
                const float* pow2, const float* sums, float* y, int64_t ldy) {
  for_each_tile<kTileRows>(n0, n1, M, w.cols, [&](auto rows, auto pair, int64_t n, int64_t m) {
    gemv8_tile<decltype(rows)::value, decltype(pair)::value, kChunks>(
        w, s, n, parts + m * s.part_bytes, pow2 + m * s.group_stride, sums + m * s.group_stride, y + m * ldy, ldy);
  });
}

bool run_avx_vnni8_gemv(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const QuantView& w, float* y,
                        int64_t ldy) {
  const GemvShape s(w);
  SplitActivations split(s, M);
  return run_split_gemv(
      pool, M, x, ldx, w, s, split, kTileRows,
      [&](const float* row, int8_t* parts, float* pow2, float* sums) {
        return split_row8(s, w.group_size, row, parts, pow2, sums);
      },
      [&](int64_t t0, int64_t t1) {
        const int64_t n0 = t0 * kTileRows, n1 = std::min(w.rows, t1 * kTileRows);
        if (w.group_size == 32)
          gemv8_rows<1>(w, s, n0, n1, M, split.parts, split.pow2.data(), split.sums.data(), y, ldy);
        else if (w.group_size == 64)
          gemv8_rows<2>(w, s, n0, n1, M, split.parts, split.pow2.data(), split.sums.data(), y, ldy);
        else
          gemv8_rows<4>(w, s, n0, n1, M, split.parts, split.pow2.data(), split.sums.data(), y, ldy);
      });
}

}  // namespace
}  // namespace moxin::cpu
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
#endif  // MOXIN_HAVE_AVX_VNNI_QUANT

namespace moxin::cpu {

bool quant_avx_vnni_supported() {
#if defined(MOXIN_HAVE_AVX_VNNI_QUANT)
  static const bool supported = cpu_has_avx2_fma_f16c() && cpu_has_avx_vnni();
  return supported;
#else
  return false;
#endif
}

bool quant_gemv_avx_vnni(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const QuantView& w, float* y,
                         int64_t ldy) {
#if defined(MOXIN_HAVE_AVX_VNNI_QUANT)
  if (!quant_avx_vnni_supported()) return false;
  if (w.bits == 8 && w.group_size % 32 == 0) return run_avx_vnni8_gemv(pool, M, x, ldx, w, y, ldy);
  return w.bits == 4 && run_avx2_int_gemv(pool, M, x, ldx, w, y, ldy);
#else
  (void)pool, (void)M, (void)x, (void)ldx, (void)w, (void)y, (void)ldy;
  return false;
#endif
}

}  // namespace moxin::cpu
