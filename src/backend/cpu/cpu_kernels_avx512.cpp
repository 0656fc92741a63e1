// AVX-512 kernels (F + BW + VL), compiled for that ISA through a target pragma so the rest
// of the program stays baseline x86-64; avx512_kernels() hands them out only when the CPU
// (and the OS, for the zmm state) supports them. Weights go bf16 -> f32 by a 16-bit shift,
// f16 -> f32 by vcvtph2ps; activations and accumulators stay f32 throughout.
#include "backend/cpu/cpu_kernels.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MOXIN_HAVE_AVX512_KERNELS 1
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "backend/cpu/cpu_gelu_fit.hpp"
#include "backend/cpu/cpu_simd_dispatch.hpp"
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

// Register tile of the GEMM: 8 activation rows x 32 weight rows = 16 zmm accumulators.
constexpr int kTileRows = 8;
constexpr int kPanelWidth = 32;

// Zen 4, 2 threads: GEMV 87-96 GFLOP per core-second at M = 32 ... 128, GEMM 60-69;
// equal at M = 256, GEMM 9% ahead at M = 512.
constexpr int64_t kGemvMaxRows = 128;

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
//
// Bandwidth-bound: what matters is keeping enough reads in flight. Eight rows stream at once
// (eight hardware-prefetch streams), and every line a tile reads is also prefetched into L2
// one tile earlier: the tile prefetches the same bytes of the next R rows. Against a prefetch
// 2 KB ahead within the row (which leaves the first 2 KB of every row of a tile to demand
// misses), this read [14336 x 4096] bf16 2-3% faster with 2 threads and 5% with one on Zen 4
// (standalone comparison, variants alternated; docs/cpu-notes.md).

// Prefetches into L2 the lines of [p, p + bytes) (bytes a power of two; one line when < 64).
template <int64_t bytes>
inline void prefetch_lines(const void* p) {
  for (int64_t b = 0; b < std::max<int64_t>(bytes, 64); b += 64)
    _mm_prefetch(static_cast<const char*>(p) + b, _MM_HINT_T1);
}

// U vectors of 16 per step and row: acc[r][m][u] partial sums, combined in a fixed order so
// a row's result does not depend on which rows share its tile.
template <class L, int R, int MG, int U>
void gemv_tile(const typename L::T* w, int64_t ld, int64_t K, const float* x, int64_t ldx,
               const float* bias, float* y, int64_t ldy) {
  constexpr int64_t kStep = 16 * U;
  const int64_t next_tile = R * ld;  // elements from a row to the same row of the next tile
  __m512 acc[R][MG][U];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MG; ++m)
      for (int u = 0; u < U; ++u) acc[r][m][u] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + kStep <= K; k += kStep) {
    __m512 xv[MG][U];
    for (int m = 0; m < MG; ++m)
      for (int u = 0; u < U; ++u) xv[m][u] = _mm512_loadu_ps(x + m * ldx + k + 16 * u);
    for (int r = 0; r < R; ++r) {
      const typename L::T* row = w + r * ld + k;
      prefetch_lines<kStep * sizeof(typename L::T)>(row + next_tile);
      for (int u = 0; u < U; ++u) {
        const __m512 wv = L::load(row + 16 * u);
        for (int m = 0; m < MG; ++m) acc[r][m][u] = _mm512_fmadd_ps(wv, xv[m][u], acc[r][m][u]);
      }
    }
  }
  for (; k < K; k += 16) {
    const __mmask16 mask = first_lanes(K - k);
    __m512 xv[MG];
    for (int m = 0; m < MG; ++m) xv[m] = _mm512_maskz_loadu_ps(mask, x + m * ldx + k);
    for (int r = 0; r < R; ++r) {
      const __m512 wv = L::load(w + r * ld + k, mask);
      for (int m = 0; m < MG; ++m) acc[r][m][0] = _mm512_fmadd_ps(wv, xv[m], acc[r][m][0]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const float b = bias ? bias[r] : 0.0f;
    for (int m = 0; m < MG; ++m) {
      __m512 sum = acc[r][m][0];
      for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[r][m][u]);
      y[m * ldy + r] = b + horizontal_sum(sum);
    }
  }
}

// Rows [0, rows) against MG activation rows: 8-row tiles for one activation row, 4-row
// tiles for more (16 accumulators either way), single rows for the rest.
template <class L, int MG>
void gemv_rows(const typename L::T* w, int64_t ld, int64_t rows, int64_t K, const float* x,
               int64_t ldx, const float* bias, float* y, int64_t ldy) {
  constexpr int R = MG == 1 ? 8 : 4;
  constexpr int U = MG <= 2 ? 2 : 1;
  int64_t r = 0;
  for (; r + R <= rows; r += R)
    gemv_tile<L, R, MG, U>(w + r * ld, ld, K, x, ldx, bias ? bias + r : nullptr, y + r, ldy);
  for (; r < rows; ++r)
    gemv_tile<L, 1, MG, U>(w + r * ld, ld, K, x, ldx, bias ? bias + r : nullptr, y + r, ldy);
}

void gemv(const WeightView& w, int64_t n0, int64_t n1, const float* x, int64_t ldx, int64_t M, const float* bias,
          float* y, int64_t ldy) {
  gemv_in_l2_blocks<Bf16Weights, F16Weights, F32Weights>(
      w, n0, n1, x, ldx, M, bias, y, ldy,
      [](auto mg, auto loader, auto... args) { gemv_rows<decltype(loader), decltype(mg)::value>(args...); });
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
  const int64_t num_panels = (nc + kPanelWidth - 1) / kPanelWidth;
  for (int64_t p = 0; p < num_panels; ++p) {
    float* panel = panels + p * kc * kPanelWidth;
    for (int half = 0; half < kPanelWidth / 16; ++half) {
      const int64_t first_row = p * kPanelWidth + half * 16;
      const int64_t valid_rows = std::clamp<int64_t>(nc - first_row, 0, 16);
      for (int64_t k = 0; k < kc; k += 16) {
        const int64_t width = std::min<int64_t>(16, kc - k);
        const __mmask16 mask = first_lanes(width);
        __m512 r[16];
        for (int i = 0; i < 16; ++i) {
          r[i] = _mm512_setzero_ps();
          if (i >= valid_rows) continue;
          const typename L::T* src = base + (n0 + first_row + i) * w.ld + k0 + k;
          r[i] = width == 16 ? L::load(src) : L::load(src, mask);
        }
        transpose16x16(r);
        for (int64_t j = 0; j < width; ++j) _mm512_storeu_ps(panel + (k + j) * kPanelWidth + half * 16, r[j]);
      }
    }
  }
}

void pack_panels(const WeightView& w, int64_t n0, int64_t nc, int64_t k0, int64_t kc, float* panels) {
  with_weight_loader<Bf16Weights, F16Weights, F32Weights>(
      w.dtype, [&](auto loader) { pack_panels_typed<decltype(loader)>(w, n0, nc, k0, kc, panels); });
}

// --- GEMM register tile: 8 rows x 32 columns = 16 zmm accumulators ----------------------

void gemm_tile(int64_t kc, const float* a, int64_t lda, int mr, const float* panel, int nr,
               float* c, int64_t ldc, const float* bias, bool accumulate) {
  static_assert(kTileRows == 8 && kPanelWidth == 32, "the tile below is written for 8 x 32");
  // Rows past mr repeat the last row: computed, never stored, never out of bounds.
  const float* rows[8];
  for (int i = 0; i < 8; ++i) rows[i] = a + std::min(i, mr - 1) * lda;
  __m512 acc[8][2];
  for (int i = 0; i < 8; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_loadu_ps(panel + k * kPanelWidth);
    const __m512 b1 = _mm512_loadu_ps(panel + k * kPanelWidth + 16);
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

// --- exp, softmax, attention, activations ----------------------------------------------

// exp(a + b), where b may carry low-order bits a cannot hold. With n = round((a + b) / ln 2),
// exp = 2^n exp(r), r = (a - n ln 2) + b in [-0.35, 0.35], and exp(r) by its Taylor series to
// degree 7 (truncation 6e-9). NaN stays NaN; overflow gives inf, underflow 0.
inline __m512 exp_sum(__m512 a, __m512 b) {
  a = _mm512_min_ps(_mm512_set1_ps(200.0f), _mm512_max_ps(_mm512_set1_ps(-200.0f), a));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_add_ps(a, b), _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), a);  // ln 2 split in two parts
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  r = _mm512_add_ps(r, b);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

inline __m512 exp16(__m512 a) { return exp_sum(a, _mm512_setzero_ps()); }

void softmax(float* x, int64_t n, float scale) {
  const __m512 sv = _mm512_set1_ps(scale);
  __m512 mv = _mm512_set1_ps(-INFINITY);
  for (int64_t i = 0; i < n; i += 16)
    mv = _mm512_max_ps(mv, _mm512_mul_ps(sv, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), first_lanes(n - i), x + i)));
  const __m512 max = _mm512_set1_ps(_mm512_reduce_max_ps(mv));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = first_lanes(n - i);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_mul_ps(sv, _mm512_maskz_loadu_ps(mask, x + i)), max));
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(mask, e));
    _mm512_mask_storeu_ps(x + i, mask, e);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / horizontal_sum(sum));
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = first_lanes(n - i);
    _mm512_mask_storeu_ps(x + i, mask, _mm512_mul_ps(inv, _mm512_maskz_loadu_ps(mask, x + i)));
  }
}

// Mask of the lanes of a vector that starts `remaining` elements before the end (0 past it).
inline __mmask16 lanes_left(int64_t remaining) { return remaining <= 0 ? 0 : first_lanes(remaining); }

// Cached rows of one kv head lie a whole slot apart (kv_heads x head_dim floats, 4 KB for
// Moxin), a stride the hardware prefetcher does not follow across pages: fetch the row this
// many positions ahead explicitly.
constexpr int64_t kAttendPrefetchRows = 8;

inline void prefetch_row(const float* row, int vectors) {
  for (int j = 0; j < vectors; ++j) _mm_prefetch(reinterpret_cast<const char*>(row + 16 * j), _MM_HINT_T0);
}

// scores[g * n + i] += q_g . k_i over columns [0, 16 NV) (masked to `width`): K row chunks
// are loaded once and used by every head of the group (q stays in L1). Four heads at a time
// give four independent FMA chains, so the FMA latency is hidden.
template <int NV>
struct ScoreColumns {
  static void run(const float* q, int64_t G, int64_t D, const float* keys, const int64_t* rows, int64_t n,
                  int64_t width, float* scores) {
    __mmask16 mask[NV];
    for (int j = 0; j < NV; ++j) mask[j] = lanes_left(width - 16 * j);
    const auto dot = [&](const __m512* kv, const float* qg, __m512& acc) {
      acc = _mm512_mul_ps(kv[0], _mm512_maskz_loadu_ps(mask[0], qg));
      for (int j = 1; j < NV; ++j) acc = _mm512_fmadd_ps(kv[j], _mm512_maskz_loadu_ps(mask[j], qg + 16 * j), acc);
    };
    for (int64_t i = 0; i < n; ++i) {
      if (i + kAttendPrefetchRows < n) prefetch_row(keys + rows[i + kAttendPrefetchRows], NV);
      const float* k = keys + rows[i];
      __m512 kv[NV];
      for (int j = 0; j < NV; ++j) kv[j] = _mm512_maskz_loadu_ps(mask[j], k + 16 * j);
      int64_t g = 0;
      for (; g + 4 <= G; g += 4) {
        __m512 acc[4];
        for (int h = 0; h < 4; ++h) dot(kv, q + (g + h) * D, acc[h]);
        for (int h = 0; h < 4; ++h) scores[(g + h) * n + i] += horizontal_sum(acc[h]);
      }
      for (; g < G; ++g) {
        __m512 acc;
        dot(kv, q + g * D, acc);
        scores[g * n + i] += horizontal_sum(acc);
      }
    }
  }
};

// y_g[0, 16 NV) (masked to `width`) = sum_i p_g[i] v_i for the G heads at once: G x NV
// accumulators stay in registers while each V row chunk is loaded once.
template <int G, int NV>
void weigh_columns(const float* p, int64_t n, const float* values, const int64_t* rows, int64_t width, float* y,
                   int64_t D) {
  __mmask16 mask[NV];
  for (int j = 0; j < NV; ++j) mask[j] = lanes_left(width - 16 * j);
  __m512 acc[G][NV];
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < NV; ++j) acc[g][j] = _mm512_setzero_ps();
  // A do-while (n >= 1 here): with a zero-trip path GCC 12 keeps acc in memory and stores
  // every accumulator on every iteration.
  int64_t i = 0;
  do {
    if (i + kAttendPrefetchRows < n) prefetch_row(values + rows[i + kAttendPrefetchRows], NV);
    const float* v = values + rows[i];
    __m512 vv[NV];
    for (int j = 0; j < NV; ++j) vv[j] = _mm512_maskz_loadu_ps(mask[j], v + 16 * j);
    for (int g = 0; g < G; ++g) {
      const __m512 w = _mm512_set1_ps(p[g * n + i]);
      for (int j = 0; j < NV; ++j) acc[g][j] = _mm512_fmadd_ps(w, vv[j], acc[g][j]);
    }
  } while (++i < n);
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < NV; ++j) _mm512_mask_storeu_ps(y + g * D + 16 * j, mask[j], acc[g][j]);
}

// All D columns for G heads (G in 1, 2, 4, 8): G x NV = up to 16 accumulators per chunk.
template <int G>
void weigh(const float* p, int64_t n, const float* values, const int64_t* rows, int64_t D, float* y) {
  constexpr int NV = G >= 8 ? 2 : G == 4 ? 4 : 8;
  for (int64_t d = 0; d < D; d += 16 * NV)
    weigh_columns<G, NV>(p, n, values + d, rows, D - d, y + d, D);
}

void attend(const float* q, int64_t G, const float* keys, const float* values, const int64_t* rows, int64_t n,
            int64_t D, float scale, float* scores, float* y) {
  std::fill(scores, scores + G * n, 0.0f);
  for (int64_t d = 0; d < D; d += 128) {
    const int64_t width = std::min<int64_t>(128, D - d);
    run_with_vectors<ScoreColumns, 8>(static_cast<int>((width + 15) / 16), q + d, G, D, keys + d, rows, n, width,
                                      scores);
  }
  for (int64_t g = 0; g < G; ++g) softmax(scores + g * n, n, scale);
  // Heads in sub-groups of 8, 4, 2 and 1, each with its accumulators in registers.
  for (int64_t g = 0; g < G;) {
    const float* p = scores + g * n;
    float* yg = y + g * D;
    if (G - g >= 8) {
      weigh<8>(p, n, values, rows, D, yg);
      g += 8;
    } else if (G - g >= 4) {
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

// erfc(|x| / sqrt 2) by the fit in cpu_gelu_fit.hpp. x^2 / 2 enters exp as an exact
// two-float sum, since at |x| = 6 one ulp of it would already cost 1e-6.
inline __m512 gelu16(__m512 x) {
  // Past |x| = 16 erfc underflows anyway; the clamp keeps x^2 finite.
  const __m512 ax = _mm512_min_ps(_mm512_set1_ps(16.0f), _mm512_abs_ps(x));
  const __m512 z = _mm512_min_ps(_mm512_set1_ps(10.0f), _mm512_mul_ps(ax, _mm512_set1_ps(0.70710678118654752f)));
  const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(z, _mm512_set1_ps(0.5f), _mm512_set1_ps(1.0f)));
  const __m512 u = _mm512_fmadd_ps(t, _mm512_set1_ps(2.4f), _mm512_set1_ps(-1.4f));
  __m512 f = _mm512_set1_ps(kGeluErfcFit[10]);
  for (int i = 9; i >= 0; --i) f = _mm512_fmadd_ps(f, u, _mm512_set1_ps(kGeluErfcFit[i]));
  const __m512 sq = _mm512_mul_ps(ax, ax);
  const __m512 sq_low = _mm512_fmsub_ps(ax, ax, sq);  // x^2 = sq + sq_low exactly
  const __m512 minus_half_sq = _mm512_mul_ps(sq, _mm512_set1_ps(-0.5f));
  const __m512 e = _mm512_mul_ps(t, exp_sum(minus_half_sq, _mm512_fnmadd_ps(sq_low, _mm512_set1_ps(0.5f), f)));
  // 1 + erf(x / sqrt 2) is erfc(|z|) for x < 0 and 2 - erfc(|z|) otherwise.
  const __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  const __m512 one_plus_erf = _mm512_mask_blend_ps(negative, _mm512_sub_ps(_mm512_set1_ps(2.0f), e), e);
  return _mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.5f)), one_plus_erf);
}

void gelu_erf(float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = first_lanes(n - i);
    _mm512_mask_storeu_ps(x + i, mask, gelu16(_mm512_maskz_loadu_ps(mask, x + i)));
  }
}

void silu_mul(const float* gate, const float* up, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = first_lanes(n - i);
    const __m512 g = _mm512_maskz_loadu_ps(mask, gate + i);
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    _mm512_mask_storeu_ps(y + i, mask, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(mask, up + i)));
  }
}

// --- Row norms and RoPE ------------------------------------------------------------------
//
// The sums in double as in the generic kernels (eight f32 lanes widened at a time, the tail
// masked to zero), so only the summation order differs from them.

inline double horizontal_sum(__m512d v) {
  const __m256d h = _mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1));
  const __m128d q = _mm_add_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
  return _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q)));
}

// The sum of x[c] - shift (squared when Square) over c < n, in double.
template <bool Square>
double widened_sum(const float* x, int64_t n, double shift) {
  const __m512d s = _mm512_set1_pd(shift);
  __m512d acc = _mm512_setzero_pd();
  for (int64_t c = 0; c < n; c += 8) {
    const __mmask8 mask = static_cast<__mmask8>(first_lanes(n - c));
    const __m512d d = _mm512_maskz_sub_pd(mask, _mm512_cvtps_pd(_mm256_maskz_loadu_ps(mask, x + c)), s);
    acc = Square ? _mm512_fmadd_pd(d, d, acc) : _mm512_add_pd(acc, d);
  }
  return horizontal_sum(acc);
}

void rms_norm(const float* x, const float* w, float eps, int64_t n, float* y) {
  const double mean_square = widened_sum<true>(x, n, 0.0) / static_cast<double>(n);
  const __m512 scale = _mm512_set1_ps(static_cast<float>(1.0 / std::sqrt(mean_square + eps)));
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 mask = first_lanes(n - c);
    const __m512 scaled = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, x + c), scale);
    _mm512_mask_storeu_ps(y + c, mask, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, w + c), scaled));
  }
}

void add_rms_norm(float* x, const float* residual, const float* w, float eps, int64_t n, float* y) {
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 mask = first_lanes(n - c);
    _mm512_mask_storeu_ps(x + c, mask,
                          _mm512_add_ps(_mm512_maskz_loadu_ps(mask, x + c), _mm512_maskz_loadu_ps(mask, residual + c)));
  }
  rms_norm(x, w, eps, n, y);
}

void layer_norm(const float* x, const float* w, const float* b, float eps, int64_t n, float* y) {
  const double mean = widened_sum<false>(x, n, 0.0) / static_cast<double>(n);
  const double rstd = 1.0 / std::sqrt(widened_sum<true>(x, n, mean) / static_cast<double>(n) + eps);
  const __m512d m = _mm512_set1_pd(mean), r = _mm512_set1_pd(rstd);
  for (int64_t c = 0; c < n; c += 8) {
    const __mmask8 mask = static_cast<__mmask8>(first_lanes(n - c));
    const auto widen = [mask](const float* p) { return _mm512_cvtps_pd(_mm256_maskz_loadu_ps(mask, p)); };
    const __m512d normed = _mm512_mul_pd(_mm512_sub_pd(widen(x + c), m), r);
    _mm256_mask_storeu_ps(y + c, mask, _mm512_cvtpd_ps(_mm512_add_pd(_mm512_mul_pd(normed, widen(w + c)), widen(b + c))));
  }
}

void rope(const float* x, const float* cos, const float* sin, int64_t half, float* out) {
  for (int64_t i = 0; i < half; i += 16) {
    const __mmask16 mask = first_lanes(half - i);
    const __m512 x1 = _mm512_maskz_loadu_ps(mask, x + i), x2 = _mm512_maskz_loadu_ps(mask, x + half + i);
    const __m512 c = _mm512_maskz_loadu_ps(mask, cos + i), s = _mm512_maskz_loadu_ps(mask, sin + i);
    _mm512_mask_storeu_ps(out + i, mask, _mm512_sub_ps(_mm512_mul_ps(x1, c), _mm512_mul_ps(x2, s)));
    _mm512_mask_storeu_ps(out + half + i, mask, _mm512_add_ps(_mm512_mul_ps(x2, c), _mm512_mul_ps(x1, s)));
  }
}

// As widen_e4m3 in cpu_kernels_avx2.cpp (an E4M3 code in an f16's bit positions is its value
// times 2^-8), 16 codes per step; only the tail goes through masked loads and stores (slow on
// Zen 4: a masked step cost 6x a plain one).
inline __m512 widen16(__m128i bytes, __m512 scale) {
  const __m256i keep = _mm256_set1_epi16(static_cast<short>(0xBF80));
  const __m256i halves = _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(_mm256_cvtepu8_epi16(bytes), 8), 1), keep);
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtph_ps(halves), _mm512_set1_ps(256.0f)), scale);
}

void widen_e4m3(const uint8_t* codes, int64_t n, float scale, float* out) {
  const __m512 s = _mm512_set1_ps(scale);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(out + i, widen16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i)), s));
  if (i == n) return;
  const __mmask16 lanes = static_cast<__mmask16>((1u << (n - i)) - 1);
  _mm512_mask_storeu_ps(out + i, lanes, widen16(_mm_maskz_loadu_epi8(lanes, codes + i), s));
}

// Whole lines with 512-bit loads in the GEMV's pattern: blocks of eight adjacent 8 KB
// "rows" read line by line in step, each line prefetched one block earlier. (Eight streams far
// apart read slower than one; eight adjacent ones faster. Prefetching the next block read 4%
// faster than 2 KB ahead within the row with 2 threads, 8% with one, on Zen 4.)
uint64_t read_stream(const uint8_t* data, int64_t bytes) {
  constexpr int kStreams = 8;
  constexpr int64_t kRowBytes = 8192;
  __m512i acc[kStreams];
  for (int s = 0; s < kStreams; ++s) acc[s] = _mm512_setzero_si512();
  int64_t block = 0;
  for (; block + kStreams * kRowBytes <= bytes; block += kStreams * kRowBytes)
    for (int64_t i = 0; i < kRowBytes; i += 64)
      for (int s = 0; s < kStreams; ++s) {
        const uint8_t* line = data + block + s * kRowBytes + i;
        _mm_prefetch(reinterpret_cast<const char*>(line + kStreams * kRowBytes), _MM_HINT_T1);
        acc[s] = _mm512_add_epi64(acc[s], _mm512_loadu_si512(line));
      }
  for (int64_t i = block; i < bytes; i += 64) acc[0] = _mm512_add_epi64(acc[0], _mm512_loadu_si512(data + i));
  for (int s = 1; s < kStreams; ++s) acc[0] = _mm512_add_epi64(acc[0], acc[s]);
  return static_cast<uint64_t>(_mm512_reduce_add_epi64(acc[0]));
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
  static const Kernels table{"avx512",    kTileRows, kPanelWidth, kGemvMaxRows, gemv,
                             pack_panels, gemm_tile, attend, softmax, gelu_erf, silu_mul, rms_norm,
                             add_rms_norm, layer_norm, rope, read_stream, widen_e4m3, nullptr};
  static const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
  return supported ? &table : nullptr;
#else
  return nullptr;
#endif
}

}  // namespace moxin::cpu

