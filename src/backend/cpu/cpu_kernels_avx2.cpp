// AVX2 + FMA + F16C kernels, for x86 CPUs without AVX-512 (AMD before Zen 4, Intel's desktop
// and laptop chips): the algorithms of cpu_kernels_avx512.cpp at half the width, with the tile
// shapes cut to AVX2's 16 vector registers. Compiled for that ISA through a target pragma;
// avx2_kernels() hands them out only when the CPU supports it. Weights go bf16 -> f32 by a
// 16-bit shift, f16 -> f32 by vcvtph2ps; activations and accumulators stay f32 throughout.
#include "backend/cpu/cpu_kernels.hpp"
#include "backend/cpu/cpu_features.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MOXIN_HAVE_AVX2_KERNELS 1
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu_avx2_common.hpp"
#include "backend/cpu/cpu_gelu_fit.hpp"
#include "backend/cpu/cpu_simd_dispatch.hpp"
#include "core/check.hpp"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
// GCC 12's intrinsics headers trip -Wmaybe-uninitialized on their own undefined vectors.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif

namespace moxin::cpu {

#if defined(MOXIN_HAVE_AVX2_KERNELS)
namespace {

// Register tile of the GEMM: 6 activation rows x 16 weight rows = 12 accumulators, plus two
// panel vectors and one broadcast (BLIS's Haswell shape).
constexpr int kTileRows = 6;
constexpr int kPanelWidth = 16;

// Zen 4, 2 threads, [14336 x 4096]: GEMV 61 / 58 / 70 GFLOP per core-second at M = 32 / 64 /
// 128, GEMM 45 / 74 / 84 (the 16-register GEMV tiles reload activations more often).
constexpr int64_t kGemvMaxRows = 32;

// Lanes [0, n) set (all for n >= 8, none for n <= 0): the mask of maskload/maskstore.
inline __m256i first_lanes(int64_t n) {
  const int count = static_cast<int>(std::clamp<int64_t>(n, 0, 8));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

inline __m256 load_first(const float* p, int64_t n) { return _mm256_maskload_ps(p, first_lanes(n)); }
inline void store_first(float* p, int64_t n, __m256 v) { _mm256_maskstore_ps(p, first_lanes(n), v); }

// Loads 8 consecutive weights as f32 (all, or the first n with zeros after: 16-bit weights
// have no masked load in AVX2, so a short tail goes through a zeroed stack copy).
struct Bf16Weights {
  using T = uint16_t;
  static __m256 load(const T* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
};

struct F16Weights {
  using T = uint16_t;
  static __m256 load(const T* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
};

struct F32Weights {
  using T = float;
  static __m256 load(const T* p) { return _mm256_loadu_ps(p); }
};

template <class L>
__m256 load_weights(const typename L::T* p, int64_t n) {
  if (n >= 8) return L::load(p);
  typename L::T copy[8] = {};
  std::memcpy(copy, p, static_cast<size_t>(std::max<int64_t>(n, 0)) * sizeof(typename L::T));
  return L::load(copy);
}

using avx2::horizontal_max;
using avx2::horizontal_sum;

// --- GEMV: R weight rows x MG activation rows, one pass over K --------------------------
//
// As on AVX-512: several rows stream at once, and each line of a tile is prefetched into L2
// one tile earlier (the same bytes of the next R rows), once per 64-byte line (the 2 KB-ahead
// prefetch it replaces was issued for every 16 bytes; 3-5% faster on Zen 4).

// acc[r][m] partial sums over K, one vector each: a row's result does not depend on which rows
// share its tile.
template <class L, int R, int MG>
void gemv_tile(const typename L::T* w, int64_t ld, int64_t K, const float* x, int64_t ldx, const float* bias,
               float* y, int64_t ldy) {
  constexpr int64_t kLine = 64 / sizeof(typename L::T);  // weights per cache line
  const int64_t next_tile = R * ld;
  __m256 acc[R][MG];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MG; ++m) acc[r][m] = _mm256_setzero_ps();
  const auto step = [&](int64_t k) __attribute__((always_inline)) {
    __m256 xv[MG];
    for (int m = 0; m < MG; ++m) xv[m] = _mm256_loadu_ps(x + m * ldx + k);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = L::load(w + r * ld + k);
      for (int m = 0; m < MG; ++m) acc[r][m] = _mm256_fmadd_ps(wv, xv[m], acc[r][m]);
    }
  };
  int64_t k = 0;
  for (; k + kLine <= K; k += kLine) {
    for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(w + r * ld + k + next_tile), _MM_HINT_T1);
    for (int64_t j = 0; j < kLine; j += 8) step(k + j);
  }
  for (; k + 8 <= K; k += 8) step(k);
  if (k < K) {
    __m256 xv[MG];
    for (int m = 0; m < MG; ++m) xv[m] = load_first(x + m * ldx + k, K - k);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = load_weights<L>(w + r * ld + k, K - k);
      for (int m = 0; m < MG; ++m) acc[r][m] = _mm256_fmadd_ps(wv, xv[m], acc[r][m]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const float b = bias ? bias[r] : 0.0f;
    for (int m = 0; m < MG; ++m) y[m * ldy + r] = b + horizontal_sum(acc[r][m]);
  }
}

// Rows [0, rows) against MG activation rows: tiles of R rows (R x MG accumulators, at most 9,
// leaving registers for the activations), single rows for the rest.
template <class L, int MG>
void gemv_rows(const typename L::T* w, int64_t ld, int64_t rows, int64_t K, const float* x, int64_t ldx,
               const float* bias, float* y, int64_t ldy) {
  constexpr int R = MG == 1 ? 8 : MG == 2 ? 4 : MG == 3 ? 3 : 2;
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

// --- GEMM panels: 8 x 8 blocks converted, transposed in registers, stored k-major --------

// In: r[i] = row i (8 columns). Out: r[j] = column j (8 rows).
void transpose8x8(__m256 r[8]) {
  __m256 t[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  // u[4h + j], 128-bit half L: rows 4h..4h+3 of column 4L + j.
  __m256 u[8];
  for (int h = 0; h < 2; ++h) {
    const __m256* s = t + 4 * h;
    u[4 * h + 0] = _mm256_shuffle_ps(s[0], s[2], 0x44);
    u[4 * h + 1] = _mm256_shuffle_ps(s[0], s[2], 0xee);
    u[4 * h + 2] = _mm256_shuffle_ps(s[1], s[3], 0x44);
    u[4 * h + 3] = _mm256_shuffle_ps(s[1], s[3], 0xee);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
    r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
  }
}

template <class L>
void pack_panels_typed(const WeightView& w, int64_t n0, int64_t nc, int64_t k0, int64_t kc, float* panels) {
  const auto* base = static_cast<const typename L::T*>(w.data);
  const int64_t num_panels = (nc + kPanelWidth - 1) / kPanelWidth;
  for (int64_t p = 0; p < num_panels; ++p) {
    float* panel = panels + p * kc * kPanelWidth;
    for (int half = 0; half < 2; ++half) {
      const int64_t first_row = p * kPanelWidth + half * 8;
      const int64_t valid_rows = std::clamp<int64_t>(nc - first_row, 0, 8);
      for (int64_t k = 0; k < kc; k += 8) {
        const int64_t width = std::min<int64_t>(8, kc - k);
        __m256 r[8];
        for (int i = 0; i < 8; ++i)
          r[i] = i < valid_rows ? load_weights<L>(base + (n0 + first_row + i) * w.ld + k0 + k, width)
                                : _mm256_setzero_ps();
        transpose8x8(r);
        for (int64_t j = 0; j < width; ++j) _mm256_storeu_ps(panel + (k + j) * kPanelWidth + half * 8, r[j]);
      }
    }
  }
}

void pack_panels(const WeightView& w, int64_t n0, int64_t nc, int64_t k0, int64_t kc, float* panels) {
  with_weight_loader<Bf16Weights, F16Weights, F32Weights>(
      w.dtype, [&](auto loader) { pack_panels_typed<decltype(loader)>(w, n0, nc, k0, kc, panels); });
}

// --- GEMM register tile: 6 rows x 16 columns = 12 ymm accumulators -----------------------

void gemm_tile(int64_t kc, const float* a, int64_t lda, int mr, const float* panel, int nr, float* c, int64_t ldc,
               const float* bias, bool accumulate) {
  // Rows past mr repeat the last row: computed, never stored, never out of bounds.
  const float* rows[kTileRows];
  for (int i = 0; i < kTileRows; ++i) rows[i] = a + std::min(i, mr - 1) * lda;
  __m256 acc[kTileRows][2];
  for (int i = 0; i < kTileRows; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  // A do-while (kc >= 1 here): with a zero-trip path GCC 12 keeps acc in memory and stores
  // every accumulator on every step (3x slower).
  int64_t k = 0;
  do {
    const __m256 b0 = _mm256_loadu_ps(panel + k * kPanelWidth);
    const __m256 b1 = _mm256_loadu_ps(panel + k * kPanelWidth + 8);
    for (int i = 0; i < kTileRows; ++i) {
      const __m256 ai = _mm256_broadcast_ss(rows[i] + k);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
    }
  } while (++k < kc);
  __m256 init0 = _mm256_setzero_ps(), init1 = _mm256_setzero_ps();
  if (!accumulate && bias) {
    init0 = load_first(bias, nr);
    init1 = load_first(bias + 8, nr - 8);
  }
  for (int i = 0; i < mr; ++i) {
    float* ci = c + i * ldc;
    if (accumulate) {
      init0 = load_first(ci, nr);
      init1 = load_first(ci + 8, nr - 8);
    }
    store_first(ci, nr, _mm256_add_ps(init0, acc[i][0]));
    store_first(ci + 8, nr - 8, _mm256_add_ps(init1, acc[i][1]));
  }
}

// --- exp, softmax, attention, activations ----------------------------------------------

// 2^e for integer lanes -126 <= e <= 127.
inline __m256 power_of_two(__m256i e) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23));
}

// exp(a + b), where b may carry low-order bits a cannot hold: as exp_sum in
// cpu_kernels_avx512.cpp (n = round((a + b) / ln 2), exp = 2^n exp(r), Taylor to degree 7),
// except that AVX2 has no vscalefps: 2^n is applied as two factors 2^(n/2) and 2^(n - n/2),
// each a normal float for the clamped range, so overflow still gives inf and underflow 0.
inline __m256 exp_sum(__m256 a, __m256 b) {
  a = _mm256_min_ps(_mm256_set1_ps(100.0f), _mm256_max_ps(_mm256_set1_ps(-150.0f), a));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(_mm256_add_ps(a, b), _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), a);  // ln 2 split in two parts
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
  r = _mm256_add_ps(r, b);
  __m256 p = _mm256_set1_ps(1.0f / 5040);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i half = _mm256_srai_epi32(ni, 1);
  return _mm256_mul_ps(_mm256_mul_ps(p, power_of_two(half)), power_of_two(_mm256_sub_epi32(ni, half)));
}

inline __m256 exp8(__m256 a) { return exp_sum(a, _mm256_setzero_ps()); }

void softmax(float* x, int64_t n, float scale) {
  const __m256 sv = _mm256_set1_ps(scale);
  __m256 mv = _mm256_set1_ps(-INFINITY);
  for (int64_t i = 0; i < n; i += 8) {
    const __m256i mask = first_lanes(n - i);
    const __m256 v = _mm256_mul_ps(sv, _mm256_maskload_ps(x + i, mask));
    mv = _mm256_max_ps(mv, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), v, _mm256_castsi256_ps(mask)));
  }
  const __m256 max = _mm256_set1_ps(horizontal_max(mv));
  __m256 sum = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 8) {
    const __m256i mask = first_lanes(n - i);
    const __m256 e = exp8(_mm256_sub_ps(_mm256_mul_ps(sv, _mm256_maskload_ps(x + i, mask)), max));
    sum = _mm256_add_ps(sum, _mm256_and_ps(e, _mm256_castsi256_ps(mask)));
    _mm256_maskstore_ps(x + i, mask, e);
  }
  const __m256 inv = _mm256_set1_ps(1.0f / horizontal_sum(sum));
  for (int64_t i = 0; i < n; i += 8) {
    const __m256i mask = first_lanes(n - i);
    _mm256_maskstore_ps(x + i, mask, _mm256_mul_ps(inv, _mm256_maskload_ps(x + i, mask)));
  }
}

// See cpu_kernels_avx512.cpp: cached rows of one kv head lie a whole slot apart, a stride the
// hardware prefetcher does not follow across pages.
constexpr int64_t kAttendPrefetchRows = 8;

inline void prefetch_row(const float* row, int vectors) {
  for (int j = 0; j < vectors; j += 2) _mm_prefetch(reinterpret_cast<const char*>(row + 8 * j), _MM_HINT_T0);
}

// Lanes of the dot product of q and a K row chunk held in kv (NV vectors, masked).
template <int NV>
inline __m256 dot_chunk(const __m256* kv, const float* q, const __m256i* mask) {
  __m256 acc = _mm256_mul_ps(kv[0], _mm256_maskload_ps(q, mask[0]));
  for (int j = 1; j < NV; ++j) acc = _mm256_fmadd_ps(kv[j], _mm256_maskload_ps(q + 8 * j, mask[j]), acc);
  return acc;
}

// scores[g * n + i] += q_g . k_i over columns [0, 8 NV) (masked to `width`): K row chunks are
// loaded once and used by every head of the group, two heads at a time.
template <int NV>
struct ScoreColumns {
  static void run(const float* q, int64_t G, int64_t D, const float* keys, const int64_t* rows, int64_t n,
                  int64_t width, float* scores) {
    __m256i mask[NV];
    for (int j = 0; j < NV; ++j) mask[j] = first_lanes(width - 8 * j);
    for (int64_t i = 0; i < n; ++i) {
      if (i + kAttendPrefetchRows < n) prefetch_row(keys + rows[i + kAttendPrefetchRows], NV);
      const float* k = keys + rows[i];
      __m256 kv[NV];
      for (int j = 0; j < NV; ++j) kv[j] = _mm256_maskload_ps(k + 8 * j, mask[j]);
      int64_t g = 0;
      for (; g + 2 <= G; g += 2) {
        const __m256 a0 = dot_chunk<NV>(kv, q + g * D, mask), a1 = dot_chunk<NV>(kv, q + (g + 1) * D, mask);
        scores[g * n + i] += horizontal_sum(a0);
        scores[(g + 1) * n + i] += horizontal_sum(a1);
      }
      if (g < G) scores[g * n + i] += horizontal_sum(dot_chunk<NV>(kv, q + g * D, mask));
    }
  }
};

// y_g[0, 8 NV) (masked to `width`) = sum_i p_g[i] v_i for G heads at once: G x NV
// accumulators stay in registers while each V row chunk is loaded once.
template <int G, int NV>
void weigh_columns(const float* p, int64_t n, const float* values, const int64_t* rows, int64_t width, float* y,
                   int64_t D) {
  __m256i mask[NV];
  for (int j = 0; j < NV; ++j) mask[j] = first_lanes(width - 8 * j);
  __m256 acc[G][NV];
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < NV; ++j) acc[g][j] = _mm256_setzero_ps();
  // A do-while (n >= 1 here), as on AVX-512: keeps acc in registers with GCC 12.
  int64_t i = 0;
  do {
    if (i + kAttendPrefetchRows < n) prefetch_row(values + rows[i + kAttendPrefetchRows], NV);
    const float* v = values + rows[i];
    __m256 vv[NV];
    for (int j = 0; j < NV; ++j) vv[j] = _mm256_maskload_ps(v + 8 * j, mask[j]);
    for (int g = 0; g < G; ++g) {
      const __m256 w = _mm256_set1_ps(p[g * n + i]);
      for (int j = 0; j < NV; ++j) acc[g][j] = _mm256_fmadd_ps(w, vv[j], acc[g][j]);
    }
  } while (++i < n);
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < NV; ++j) _mm256_maskstore_ps(y + g * D + 8 * j, mask[j], acc[g][j]);
}

// All D columns for G heads (G in 1, 2, 4): G x NV accumulators plus NV row chunks fit the
// 16 registers.
template <int G>
void weigh(const float* p, int64_t n, const float* values, const int64_t* rows, int64_t D, float* y) {
  constexpr int NV = G == 4 ? 2 : 4;
  for (int64_t d = 0; d < D; d += 8 * NV) weigh_columns<G, NV>(p, n, values + d, rows, D - d, y + d, D);
}

void attend(const float* q, int64_t G, const float* keys, const float* values, const int64_t* rows, int64_t n,
            int64_t D, float scale, float* scores, float* y) {
  std::fill(scores, scores + G * n, 0.0f);
  for (int64_t d = 0; d < D; d += 64) {
    const int64_t width = std::min<int64_t>(64, D - d);
    run_with_vectors<ScoreColumns, 8>(static_cast<int>((width + 7) / 8), q + d, G, D, keys + d, rows, n, width,
                                      scores);
  }
  for (int64_t g = 0; g < G; ++g) softmax(scores + g * n, n, scale);
  for (int64_t g = 0; g < G;) {
    const float* p = scores + g * n;
    float* yg = y + g * D;
    if (G - g >= 4) {
      weigh<4>(p, n, values, rows, D, yg);
      g += 4;
    } else if (G - g >= 2) {
      weigh<2>(p, n, values, rows, D, yg);
      g += 2;
    } else {
      weigh<1>(p, n, values, rows, D, yg);
      g += 1;
    }
  }
}

// GELU as gelu16 in cpu_kernels_avx512.cpp (same polynomial, same exact split of x^2 / 2).
inline __m256 gelu8(__m256 x) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 ax = _mm256_min_ps(_mm256_set1_ps(16.0f), _mm256_and_ps(x, abs_mask));
  const __m256 z = _mm256_min_ps(_mm256_set1_ps(10.0f), _mm256_mul_ps(ax, _mm256_set1_ps(0.70710678118654752f)));
  const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(z, _mm256_set1_ps(0.5f), _mm256_set1_ps(1.0f)));
  const __m256 u = _mm256_fmadd_ps(t, _mm256_set1_ps(2.4f), _mm256_set1_ps(-1.4f));
  __m256 f = _mm256_set1_ps(kGeluErfcFit[10]);
  for (int i = 9; i >= 0; --i) f = _mm256_fmadd_ps(f, u, _mm256_set1_ps(kGeluErfcFit[i]));
  const __m256 sq = _mm256_mul_ps(ax, ax);
  const __m256 sq_low = _mm256_fmsub_ps(ax, ax, sq);  // x^2 = sq + sq_low exactly
  const __m256 minus_half_sq = _mm256_mul_ps(sq, _mm256_set1_ps(-0.5f));
  const __m256 e = _mm256_mul_ps(t, exp_sum(minus_half_sq, _mm256_fnmadd_ps(sq_low, _mm256_set1_ps(0.5f), f)));
  const __m256 negative = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
  const __m256 one_plus_erf = _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(2.0f), e), e, negative);
  return _mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.5f)), one_plus_erf);
}

void gelu_erf(float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += 8) {
    const __m256i mask = first_lanes(n - i);
    _mm256_maskstore_ps(x + i, mask, gelu8(_mm256_maskload_ps(x + i, mask)));
  }
}

void silu_mul(const float* gate, const float* up, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 8) {
    const __m256i mask = first_lanes(n - i);
    const __m256 g = _mm256_maskload_ps(gate + i, mask);
    const __m256 silu =
        _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    _mm256_maskstore_ps(y + i, mask, _mm256_mul_ps(silu, _mm256_maskload_ps(up + i, mask)));
  }
}

// --- Row norms and RoPE ------------------------------------------------------------------
//
// The sums in double as in the generic kernels (f32 lanes widened four at a time), so only
// the summation order differs from them; a row's last n % 8 values are summed one by one.

inline double horizontal_sum(__m256d v) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

// The sum of x[c] - shift (squared when Square) over c < n, in double.
template <bool Square>
double widened_sum(const float* x, int64_t n, double shift) {
  const __m256d s = _mm256_set1_pd(shift);
  __m256d acc[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    for (int h = 0; h < 2; ++h) {
      const __m256d d = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + c + 4 * h)), s);
      acc[h] = Square ? _mm256_fmadd_pd(d, d, acc[h]) : _mm256_add_pd(acc[h], d);
    }
  }
  double sum = horizontal_sum(_mm256_add_pd(acc[0], acc[1]));
  for (; c < n; ++c) sum += Square ? (x[c] - shift) * (x[c] - shift) : x[c] - shift;
  return sum;
}

void rms_norm(const float* x, const float* w, float eps, int64_t n, float* y) {
  const double mean_square = widened_sum<true>(x, n, 0.0) / static_cast<double>(n);
  const __m256 scale = _mm256_set1_ps(static_cast<float>(1.0 / std::sqrt(mean_square + eps)));
  for (int64_t c = 0; c < n; c += 8) {
    const __m256i mask = first_lanes(n - c);
    const __m256 scaled = _mm256_mul_ps(_mm256_maskload_ps(x + c, mask), scale);
    _mm256_maskstore_ps(y + c, mask, _mm256_mul_ps(_mm256_maskload_ps(w + c, mask), scaled));
  }
}

void add_rms_norm(float* x, const float* residual, const float* w, float eps, int64_t n, float* y) {
  for (int64_t c = 0; c < n; c += 8) {
    const __m256i mask = first_lanes(n - c);
    _mm256_maskstore_ps(x + c, mask,
                        _mm256_add_ps(_mm256_maskload_ps(x + c, mask), _mm256_maskload_ps(residual + c, mask)));
  }
  rms_norm(x, w, eps, n, y);
}

void layer_norm(const float* x, const float* w, const float* b, float eps, int64_t n, float* y) {
  const double mean = widened_sum<false>(x, n, 0.0) / static_cast<double>(n);
  const double rstd = 1.0 / std::sqrt(widened_sum<true>(x, n, mean) / static_cast<double>(n) + eps);
  const __m256d m = _mm256_set1_pd(mean), r = _mm256_set1_pd(rstd);
  int64_t c = 0;
  for (; c + 4 <= n; c += 4) {
    const __m256d normed = _mm256_mul_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + c)), m), r);
    const __m256d affine = _mm256_add_pd(_mm256_mul_pd(normed, _mm256_cvtps_pd(_mm_loadu_ps(w + c))),
                                         _mm256_cvtps_pd(_mm_loadu_ps(b + c)));
    _mm_storeu_ps(y + c, _mm256_cvtpd_ps(affine));
  }
  for (; c < n; ++c) y[c] = static_cast<float>((x[c] - mean) * rstd * w[c] + b[c]);
}

void rope(const float* x, const float* cos, const float* sin, int64_t half, float* out) {
  for (int64_t i = 0; i < half; i += 8) {
    const __m256i mask = first_lanes(half - i);
    const __m256 x1 = _mm256_maskload_ps(x + i, mask), x2 = _mm256_maskload_ps(x + half + i, mask);
    const __m256 c = _mm256_maskload_ps(cos + i, mask), s = _mm256_maskload_ps(sin + i, mask);
    _mm256_maskstore_ps(out + i, mask, _mm256_sub_ps(_mm256_mul_ps(x1, c), _mm256_mul_ps(x2, s)));
    _mm256_maskstore_ps(out + half + i, mask, _mm256_add_ps(_mm256_mul_ps(x2, c), _mm256_mul_ps(x1, s)));
  }
}

// The two halves of a 64-byte line added as 64-bit lanes.
inline __m256i line_sum(const uint8_t* line) {
  return _mm256_add_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(line)),
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(line + 32)));
}

// E4M3 codes moved into an f16's bit positions (code << 7, sign to bit 15) are f16 numbers of
// the code's value times 2^-8, subnormals included: F16C widens them exactly, times 2^8 is
// exact too, then the scale rounds as moxin::widen_e4m3 does. `bytes` are 16 codes.
inline void widen16(__m128i bytes, __m256 scale, float* out) {
  const __m128i keep = _mm_set1_epi16(static_cast<short>(0xBF80));  // sign, 4 + 3 code bits
  const __m256 two8 = _mm256_set1_ps(256.0f);
  // (code << 8) >> 1 arithmetically copies the sign into bit 14, which the mask clears.
  const __m128i lo = _mm_and_si128(_mm_srai_epi16(_mm_unpacklo_epi8(_mm_setzero_si128(), bytes), 1), keep);
  const __m128i hi = _mm_and_si128(_mm_srai_epi16(_mm_unpackhi_epi8(_mm_setzero_si128(), bytes), 1), keep);
  _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtph_ps(lo), two8), scale));
  _mm256_storeu_ps(out + 8, _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtph_ps(hi), two8), scale));
}

void widen_e4m3(const uint8_t* codes, int64_t n, float scale, float* out) {
  const __m256 s = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) widen16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i)), s, out + i);
  if (i == n) return;
  alignas(16) uint8_t tail[16] = {};
  alignas(32) float widened[16];
  std::memcpy(tail, codes + i, static_cast<size_t>(n - i));
  widen16(_mm_load_si128(reinterpret_cast<const __m128i*>(tail)), s, widened);
  std::memcpy(out + i, widened, static_cast<size_t>(n - i) * sizeof(float));
}

// As read_stream in cpu_kernels_avx512.cpp (blocks of eight adjacent 8 KB rows in step, each
// line prefetched one block earlier), with two 256-bit loads per line.
uint64_t read_stream(const uint8_t* data, int64_t bytes) {
  constexpr int kStreams = 8;
  constexpr int64_t kRowBytes = 8192;
  __m256i acc[kStreams];
  for (int s = 0; s < kStreams; ++s) acc[s] = _mm256_setzero_si256();
  int64_t block = 0;
  for (; block + kStreams * kRowBytes <= bytes; block += kStreams * kRowBytes)
    for (int64_t i = 0; i < kRowBytes; i += 64)
      for (int s = 0; s < kStreams; ++s) {
        const uint8_t* line = data + block + s * kRowBytes + i;
        _mm_prefetch(reinterpret_cast<const char*>(line + kStreams * kRowBytes), _MM_HINT_T1);
        acc[s] = _mm256_add_epi64(acc[s], line_sum(line));
      }
  for (int64_t i = block; i < bytes; i += 64) acc[0] = _mm256_add_epi64(acc[0], line_sum(data + i));
  for (int s = 1; s < kStreams; ++s) acc[0] = _mm256_add_epi64(acc[0], acc[s]);
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc[0]);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

}  // namespace
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
#endif  // MOXIN_HAVE_AVX2_KERNELS

// Compiled for the baseline ISA: it runs before anyone knows whether AVX2 is there.

const Kernels* avx2_kernels() {
#if defined(MOXIN_HAVE_AVX2_KERNELS)
  static const Kernels table{"avx2",      kTileRows, kPanelWidth, kGemvMaxRows, gemv,
                             pack_panels, gemm_tile, attend, softmax, gelu_erf, silu_mul, rms_norm,
                             add_rms_norm, layer_norm, rope, read_stream, widen_e4m3, nullptr};
  return cpu_has_avx2_fma_f16c() ? &table : nullptr;
#else
  return nullptr;
#endif
}

}  // namespace moxin::cpu
