// The bf16-weight linears of the avx512bf16 table, at every row count: each output is one dot
// product of the bf16-rounded activation row and the weight row (read in place from the
// checkpoint), 32 inputs per VDPBF16PS (16 f32 lanes, each adding a pair of products) against
// 16 per f32 FMA after widening, so prefill and the encoders run at up to twice the f32 GEMM's
// rate and a decode step issues half the instructions per weight.
//
// A register tile is kTileRows activation rows x kTileCols weight rows of 16-lane accumulators,
// carried over all of k (no k blocking: a block's partial sums would have to leave the registers
// for memory). Weight rows are taken in blocks of about kBlockBytes, which stay in L2 while
// every activation row passes over them; the activations (a few MB) come from L3. Each output's
// sum runs in one order whatever M, the tile it falls in or the thread count: the same bits for a
// row alone as in a batch (the server's batch invariance).
#include "backend/cpu/cpu_matmul_avx512bf16.hpp"

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

#include "core/large_buffer.hpp"
#include "core/thread_pool.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MOXIN_HAVE_AVX512BF16_KERNELS 1
#include <immintrin.h>
#endif

namespace moxin::cpu {

#if defined(MOXIN_HAVE_AVX512BF16_KERNELS)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,fma")
// GCC 12's intrinsics trip -Wmaybe-uninitialized on their own undefined vectors (bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace {

constexpr int kTileRows = 4;                // activation rows per register tile
constexpr int kTileCols = 6;                // weight rows per register tile: 24 accumulators
constexpr int64_t kBlockBytes = 768 << 10;  // weight rows per block: an L2-resident share of W

// The 16 lanes' sum in one fixed order (every output takes this path).
inline float sum_lanes(__m512 v) {
  const __m256 lo = _mm512_castps512_ps256(v);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  const __m256 eight = _mm256_add_ps(lo, hi);
  const __m128 four = _mm_add_ps(_mm256_castps256_ps128(eight), _mm256_extractf128_ps(eight, 1));
  const __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));
  return _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)));
}

// 32 inputs of a row from k on; the last step's loads stop at the row's end (zeros after it).
struct WholeStep {
  int64_t k;
  __m512bh operator()(const uint16_t* row) const {
    return reinterpret_cast<__m512bh>(_mm512_loadu_si512(row + k));
  }
};
struct LastStep {
  int64_t k;
  __mmask32 lanes;
  __m512bh operator()(const uint16_t* row) const {
    return reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(lanes, row + k));
  }
};

// acc[r][c] += the pairs of one step of activation row r and weight row c.
template <int R, int C, class Load>
inline void dot_step(__m512 (&acc)[R][C], const uint16_t* xb, int64_t ldxb, const uint16_t* w, int64_t ldw, Load load) {
  __m512bh xv[R];
  for (int r = 0; r < R; ++r) xv[r] = load(xb + r * ldxb);
  for (int c = 0; c < C; ++c) {
    const __m512bh wv = load(w + c * ldw);
    for (int r = 0; r < R; ++r) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], xv[r], wv);
  }
}

// y[r * ldy + c] = bias[c] + sum_k xb[r * ldxb + k] * w[c * ldw + k] for r < R, c < C. `prefetch`:
// the first pass over a weight block also asks for the next tile's next_cols weight rows (to
// L2), which a decode step reads from memory once.
template <int R, int C>
void tile(const uint16_t* xb, int64_t ldxb, const uint16_t* w, int64_t ldw, int64_t k_total, bool prefetch,
          int next_cols, const float* bias, float* y, int64_t ldy) {
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  const int64_t whole = k_total / 32 * 32;
  for (int64_t k = 0; k < whole; k += 32) {
    if (prefetch)
      for (int c = 0; c < next_cols; ++c) _mm_prefetch(reinterpret_cast<const char*>(w + (C + c) * ldw + k), _MM_HINT_T1);
    dot_step(acc, xb, ldxb, w, ldw, WholeStep{k});
  }
  if (whole < k_total)
    dot_step(acc, xb, ldxb, w, ldw, LastStep{whole, static_cast<__mmask32>((uint32_t{1} << (k_total - whole)) - 1u)});
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) y[r * ldy + c] = sum_lanes(acc[r][c]) + (bias ? bias[c] : 0.0f);
}

using TileFn = void (*)(const uint16_t*, int64_t, const uint16_t*, int64_t, int64_t, bool, int, const float*, float*,
                        int64_t);

// tile<R, C> for 1 <= R <= kTileRows, 1 <= C <= kTileCols.
template <int R, int... Cs>
constexpr std::array<TileFn, kTileCols> tiles_of_rows(std::integer_sequence<int, Cs...>) {
  return {&tile<R, Cs + 1>...};
}
template <int... Rs>
constexpr std::array<std::array<TileFn, kTileCols>, kTileRows> all_tiles(std::integer_sequence<int, Rs...>) {
  return {tiles_of_rows<Rs + 1>(std::make_integer_sequence<int, kTileCols>{})...};
}
constexpr auto kTiles = all_tiles(std::make_integer_sequence<int, kTileRows>{});

// x's rows rounded to bf16 (nearest even), K apart.
void round_rows(const float* x, int64_t ldx, int64_t m0, int64_t m1, int64_t k_total, uint16_t* xb) {
  for (int64_t m = m0; m < m1; ++m)
    for (int64_t k = 0; k < k_total; k += 16) {
      const __mmask16 lanes = k_total - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (k_total - k)) - 1u);
      const __m256i bits = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(lanes, x + m * ldx + k)));
      _mm256_mask_storeu_epi16(xb + m * k_total + k, lanes, bits);
    }
}

}  // namespace

int64_t matmul_avx512_bf16(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const WeightView& w,
                           const float* bias, float* y, int64_t ldy) {
  const int64_t N = w.rows, K = w.cols;
  if (!avx512_bf16_supported() || w.dtype != DType::BF16 || M <= 0 || N <= 0) return 0;
  // Reused across calls: decode calls this for every linear of every token, and a fresh
  // allocation of a prefill's size is a fresh mapping whose pages fault in on every call.
  thread_local std::vector<uint16_t, LargeAllocator<uint16_t>> xb_storage;
  xb_storage.resize(static_cast<size_t>(M * K));
  uint16_t* const xb = xb_storage.data();
  const auto round = [&](int64_t m0, int64_t m1) { round_rows(x, ldx, m0, m1, K, xb); };
  const auto* wd = static_cast<const uint16_t*>(w.data);
  const int64_t block_rows = std::max<int64_t>(kTileCols, kBlockBytes / std::max<int64_t>(1, 2 * K) / kTileCols * kTileCols);
  const int64_t blocks = (N + block_rows - 1) / block_rows;
  const auto compute = [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * block_rows, n1 = std::min(N, n0 + block_rows);
      for (int64_t m = 0; m < M; m += kTileRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kTileRows, M - m));
        for (int64_t n = n0; n < n1; n += kTileCols) {
          const int cols = static_cast<int>(std::min<int64_t>(kTileCols, n1 - n));
          const int next_cols = static_cast<int>(std::clamp<int64_t>(n1 - n - cols, 0, kTileCols));
          kTiles[static_cast<size_t>(rows - 1)][static_cast<size_t>(cols - 1)](
              xb + m * K, K, wd + n * w.ld, w.ld, K, m == 0, next_cols, bias ? bias + n : nullptr, y + m * ldy + n, ldy);
        }
      }
    }
  };
  if (pool) {
    // A task rounds at least 64K inputs (decode rows are a few KB each).
    pool->parallel_for(M, round, std::max<int64_t>(1, (64 << 10) / std::max<int64_t>(1, K)));
    pool->parallel_for(blocks, compute);
  } else {
    round(0, M);
    compute(0, blocks);
  }
  return N;
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

// Compiled for the baseline ISA from here on.

bool avx512_bf16_supported() {
  static const bool supported = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                                __builtin_cpu_supports("fma");
  return supported;
}

#else

bool avx512_bf16_supported() { return false; }

int64_t matmul_avx512_bf16(ThreadPool*, int64_t, const float*, int64_t, const WeightView&, const float*, float*,
                           int64_t) {
  return 0;
}

#endif

}  // namespace moxin::cpu
