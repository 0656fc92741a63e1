// AVX-512 VNNI quantized GEMV for decode-sized batches. The packed codes are the unsigned byte
// operand of vpdpbusd (64 multiply-adds per instruction, against 16 for an f32 FMA after
// widening), the activations the signed one. Activations rounded to one int8 would carry 8 bits
// (coarser than bf16), so each group of activations is split exactly into three signed bytes
// (cpu_quant_split.hpp: a 24-bit fixed-point value per group, as fine as f32 near the group's
// largest element). Per group: dot = 2^(e - 16) (65536 D_h + 256 D_l + D_t) from three integer
// dot products per code load, then y += scale * dot + bias * sum(x), the sum
// quant_gemv_generic forms in f32. The three dot products are the bound: about 24 GB/s of
// 4-bit weights per Zen 4 core.
#include "backend/cpu/cpu_quant_kernels.hpp"
#include "backend/cpu/cpu_features.hpp"
#include "backend/cpu/cpu_quant_split.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MOXIN_HAVE_VNNI_QUANT 1
#include <immintrin.h>
#endif

namespace moxin::cpu {

#if defined(MOXIN_HAVE_VNNI_QUANT)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")
// GCC 12's intrinsics trip -Wmaybe-uninitialized on their own undefined vectors (bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
namespace {

inline float horizontal_sum(__m512 v) {
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  v = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_cvtss_f32(v);
}

inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

// Scales or biases i .. i + 15 of a row (lanes past `mask` zero) as f32.
inline __m512 load_scales(const void* data, DType dtype, int64_t i, __mmask16 mask) {
  switch (dtype) {
    case DType::BF16:
      return _mm512_castsi512_ps(_mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(data) + i)), 16));
    case DType::F16:
      return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(data) + i));
    default:
      return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(data) + i);
  }
}

// The three signed bytes of 16 integers q (|q| <= 127 * 65536) stored at h, h + gap, h + 2 gap.
inline void store_parts(__m512i q, int8_t* h, int64_t gap) {
  const __m512i t = _mm512_srai_epi32(_mm512_slli_epi32(q, 24), 24);
  const __m512i rest = _mm512_srai_epi32(_mm512_sub_epi32(q, t), 8);
  const __m512i l = _mm512_srai_epi32(_mm512_slli_epi32(rest, 24), 24);
  const __m512i high = _mm512_srai_epi32(_mm512_sub_epi32(rest, l), 8);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(h), _mm512_cvtepi32_epi8(high));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(h + gap), _mm512_cvtepi32_epi8(l));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(h + 2 * gap), _mm512_cvtepi32_epi8(t));
}

// One activation row into the kernel's layout (see the file comment); pow2[g] = 2^(e - 16),
// sums[g] = sum of group g. False when some x is not finite: the split cannot carry it.
bool split_row(const GemvShape& s, int bits, int64_t group_size, const float* x, int8_t* parts, float* pow2,
               float* sums) {
  if (s.full_steps < s.steps) std::memset(parts + s.full_steps * s.step_bytes, 0, static_cast<size_t>(s.step_bytes));
  const __m512 infinity = _mm512_set1_ps(INFINITY);
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int64_t g = 0; g < s.groups; ++g) {
    const float* xg = x + g * group_size;
    __m512 amax = _mm512_setzero_ps(), sum = _mm512_setzero_ps();
    __mmask16 bad = 0;
    for (int64_t k = 0; k < group_size; k += 16) {
      const __m512 v = _mm512_loadu_ps(xg + k);
      const __m512 magnitude = _mm512_abs_ps(v);
      bad |= _mm512_cmp_ps_mask(magnitude, infinity, _CMP_NLT_UQ);  // inf or NaN
      amax = _mm512_max_ps(amax, magnitude);
      sum = _mm512_add_ps(sum, v);
    }
    if (bad) return false;
    const int e = split_exponent(_mm512_reduce_max_ps(amax));
    pow2[g] = std::ldexp(1.0f, e - 16);
    sums[g] = _mm512_reduce_add_ps(sum);
    const __m512 to_fixed = _mm512_set1_ps(std::ldexp(1.0f, 16 - e));
    for (int64_t k = 0; k < group_size; k += 32) {
      const int64_t input = g * group_size + k, step = input / s.step.inputs, within = input % s.step.inputs;
      int8_t* dst = parts + step * s.step_bytes;
      // Power-of-two scaling is exact; one rounding to the nearest integer.
      const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xg + k), to_fixed));
      const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xg + k + 16), to_fixed));
      if (bits == 8) {
        store_parts(q0, dst + within, s.part_gap);
        store_parts(q1, dst + within + 16, s.part_gap);
      } else {
        // Byte b of the codes holds inputs 2b (low nibble, first operand) and 2b + 1 (high).
        store_parts(_mm512_permutex2var_epi32(q0, even, q1), dst + within / 2, s.part_gap);
        store_parts(_mm512_permutex2var_epi32(q0, odd, q1), dst + 64 + within / 2, s.part_gap);
      }
    }
  }
  return true;
}

// Bytes of a row's codes ahead of the current step that the step pulls into L1.
constexpr int64_t kL1Ahead = 256;

// R weight rows from n against MM activation rows. Each code vector feeds 3 * MM vpdpbusd; per
// step and pair (row, activation row), one FMA into the f32 accumulator after the conversion.
template <int kBits, int kVectors, int kGroupsPerStep, int R, int MM>
void gemv_tile(const QuantView& w, const GemvShape& s, int64_t n, const int8_t* parts, const float* pow2,
               const float* sums, float* y, int64_t ldy, float* scaled) {
  constexpr int64_t kCodeBytes = kBits == 8 ? kVectors * 64 : 64;
  constexpr int64_t kStepBytes = 3 * kVectors * 64;
  const int64_t row_bytes = w.cols * kBits / 8;
  const uint8_t* codes[R];
  for (int r = 0; r < R; ++r) codes[r] = reinterpret_cast<const uint8_t*>(w.codes) + (n + r) * row_bytes;

  // scaled[(r * MM + m) * stride + g] = scale(n + r, g) * 2^(e(m, g) - 16); the accumulators
  // start with sum_g bias(n + r, g) * sum(m, g).
  __m512 acc[R][MM];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MM; ++m) acc[r][m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < s.groups; g += 16) {
    const __mmask16 mask = first_lanes(s.groups - g);
    for (int r = 0; r < R; ++r) {
      const __m512 scale = load_scales(w.scales, w.scale_dtype, (n + r) * s.groups + g, mask);
      const __m512 bias = load_scales(w.biases, w.scale_dtype, (n + r) * s.groups + g, mask);
      for (int m = 0; m < MM; ++m) {
        _mm512_storeu_ps(scaled + (r * MM + m) * s.group_stride + g,
                         _mm512_mul_ps(scale, _mm512_loadu_ps(pow2 + m * s.group_stride + g)));
        acc[r][m] = _mm512_fmadd_ps(bias, _mm512_loadu_ps(sums + m * s.group_stride + g), acc[r][m]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MM; ++m)
      _mm512_storeu_ps(scaled + (r * MM + m) * s.group_stride + (s.groups + 15) / 16 * 16, _mm512_setzero_ps());

  const __m512i low_nibbles = _mm512_set1_epi8(15);
  const __m512 two_16 = _mm512_set1_ps(65536.0f);
  // The group of each i32 lane of a step's dot products: lane j sums inputs 8j .. 8j + 7 at 4
  // bits (its 4 bytes of low and of high nibbles), 4j .. 4j + 3 at 8 bits, so a step of two
  // groups has lanes 0-7 in the first, one of four groups lanes 4g .. 4g + 3 in group g.
  const __m512i group_of_lane =
      kGroupsPerStep == 4 ? _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0)
                          : _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  // Code bytes of a row's last step when it is part full (0 when every step is full).
  const int64_t tail_bytes = (w.cols - s.full_steps * s.step.inputs) * kBits / 8;
  auto step = [&](int64_t st, bool tail) __attribute__((always_inline)) {
    __m512i c[R][kVectors];
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = codes[r] + st * kCodeBytes;
      // The same bytes of the next tile of rows: each line is fetched once, a tile ahead.
      _mm_prefetch(reinterpret_cast<const char*>(p + R * row_bytes), _MM_HINT_T1);
      // And this row's line four steps on, into L1: with the codes on 2 MB pages (core/
      // large_buffer.hpp) nothing else brings it there in time (8-bit g64 decode on one Zen 4
      // core: 84 ms/step on 4 KB pages, 93 on 2 MB pages without this line, 82-85 with it).
      _mm_prefetch(reinterpret_cast<const char*>(p + kL1Ahead), _MM_HINT_T0);
      // A part-full last step reads only the row's own bytes (zeros beyond, met by zero
      // activations): a masked load, which Zen 4 runs several times slower, only there.
      if constexpr (kBits == 4) {
        const __m512i raw =
            tail ? _mm512_maskz_loadu_epi8((uint64_t{1} << tail_bytes) - 1, p) : _mm512_loadu_si512(p);
        c[r][0] = _mm512_and_si512(raw, low_nibbles);
        c[r][1] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low_nibbles);
      } else {
        for (int v = 0; v < kVectors; ++v) {
          const int64_t left = tail_bytes - 64 * v;  // only read when tail
          c[r][v] = !tail || left >= 64 ? _mm512_loadu_si512(p + 64 * v)
                    : left > 0         ? _mm512_maskz_loadu_epi8((uint64_t{1} << left) - 1, p + 64 * v)
                                       : _mm512_setzero_si512();
        }
      }
    }
    for (int m = 0; m < MM; ++m) {
      const int8_t* a = parts + m * s.part_bytes + st * kStepBytes;
      for (int r = 0; r < R; ++r) {
        __m512 dot;
        if constexpr (kBits == 4) {
          // Each lane sums 8 products of at most 15 * 128, so 65536 D_h + 256 D_l + D_t fits
          // int32: Horner's rule in the one accumulator.
          __m512i d = _mm512_setzero_si512();
          for (int part = 0; part < 3; ++part) {
            if (part > 0) d = _mm512_slli_epi32(d, 8);
            for (int v = 0; v < kVectors; ++v)
              d = _mm512_dpbusd_epi32(d, c[r][v], _mm512_loadu_si512(a + 64 * (part * kVectors + v)));
          }
          dot = _mm512_cvtepi32_ps(d);
        } else {
          // 8-bit lanes reach 4 * 255 * 128 per part: D_h apart, 256 D_l + D_t fits int32.
          __m512i high = _mm512_setzero_si512(), low = _mm512_setzero_si512();
          for (int v = 0; v < kVectors; ++v) {
            high = _mm512_dpbusd_epi32(high, c[r][v], _mm512_loadu_si512(a + 64 * v));
            low = _mm512_dpbusd_epi32(low, c[r][v], _mm512_loadu_si512(a + 64 * (kVectors + v)));
          }
          low = _mm512_slli_epi32(low, 8);
          for (int v = 0; v < kVectors; ++v)
            low = _mm512_dpbusd_epi32(low, c[r][v], _mm512_loadu_si512(a + 64 * (2 * kVectors + v)));
          dot = _mm512_fmadd_ps(_mm512_cvtepi32_ps(high), two_16, _mm512_cvtepi32_ps(low));
        }
        const float* sc = scaled + (r * MM + m) * s.group_stride;
        const __m512 scale = kGroupsPerStep > 1
                                 ? _mm512_permutexvar_ps(group_of_lane, _mm512_loadu_ps(sc + kGroupsPerStep * st))
                                 : _mm512_set1_ps(sc[st]);
        acc[r][m] = _mm512_fmadd_ps(dot, scale, acc[r][m]);
      }
    }
  };
  for (int64_t st = 0; st < s.full_steps; ++st) step(st, false);
  if (s.full_steps < s.steps) step(s.full_steps, true);
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MM; ++m) y[m * ldy + n + r] = horizontal_sum(acc[r][m]);
}

constexpr int kTileRows = 4;

template <int kBits, int kVectors, int kGroupsPerStep>
void gemv_rows(const QuantView& w, const GemvShape& s, int64_t n0, int64_t n1, int64_t M, const int8_t* parts,
               const float* pow2, const float* sums, float* y, int64_t ldy, float* scaled) {
  for_each_tile<kTileRows>(n0, n1, M, w.cols * kBits / 8, [&](auto rows, auto pair, int64_t n, int64_t m) {
    gemv_tile<kBits, kVectors, kGroupsPerStep, decltype(rows)::value, decltype(pair)::value>(
        w, s, n, parts + m * s.part_bytes, pow2 + m * s.group_stride, sums + m * s.group_stride, y + m * ldy, ldy,
        scaled);
  });
}

void gemv(const QuantView& w, const GemvShape& s, int64_t n0, int64_t n1, int64_t M, const int8_t* parts,
          const float* pow2, const float* sums, float* y, int64_t ldy, float* scaled) {
  if (w.bits == 8 && w.group_size == 32)
    gemv_rows<8, 1, 2>(w, s, n0, n1, M, parts, pow2, sums, y, ldy, scaled);
  else if (w.bits == 8 && w.group_size == 64)
    gemv_rows<8, 1, 1>(w, s, n0, n1, M, parts, pow2, sums, y, ldy, scaled);
  else if (w.bits == 8)
    gemv_rows<8, 2, 1>(w, s, n0, n1, M, parts, pow2, sums, y, ldy, scaled);
  else if (w.group_size == 32)
    gemv_rows<4, 2, 4>(w, s, n0, n1, M, parts, pow2, sums, y, ldy, scaled);
  else if (w.group_size == 64)
    gemv_rows<4, 2, 2>(w, s, n0, n1, M, parts, pow2, sums, y, ldy, scaled);
  else
    gemv_rows<4, 2, 1>(w, s, n0, n1, M, parts, pow2, sums, y, ldy, scaled);
}

}  // namespace
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
#endif  // MOXIN_HAVE_VNNI_QUANT

// Compiled for the baseline ISA from here on.

bool quant_vnni_supported() {
#if defined(MOXIN_HAVE_VNNI_QUANT)
  static const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
                                __builtin_cpu_supports("fma") && cpu_has_f16c();
  return supported;
#else
  return false;
#endif
}

bool quant_gemv_vnni(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const QuantView& w, float* y,
                     int64_t ldy) {
#if defined(MOXIN_HAVE_VNNI_QUANT)
  if (!quant_vnni_supported()) return false;
  const GemvShape s(w);
  SplitActivations split(s, M);
  return run_split_gemv(
      pool, M, x, ldx, w, s, split, kTileRows,
      [&](const float* row, int8_t* parts, float* pow2, float* sums) {
        return split_row(s, w.bits, w.group_size, row, parts, pow2, sums);
      },
      [&](int64_t t0, int64_t t1) {
        std::vector<float> scaled(static_cast<size_t>(kTileRows * 2 * s.group_stride));
        gemv(w, s, t0 * kTileRows, std::min(w.rows, t1 * kTileRows), M, split.parts, split.pow2.data(),
             split.sums.data(), y, ldy, scaled.data());
      });
#else
  (void)pool, (void)M, (void)x, (void)ldx, (void)w, (void)y, (void)ldy;
  return false;
#endif
}

}  // namespace moxin::cpu
