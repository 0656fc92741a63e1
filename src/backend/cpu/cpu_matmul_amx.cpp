// The bf16-weight linears of the amx table on AMX tiles (Intel Sapphire Rapids and later), at
// every row count: bf16 x bf16 products summed in f32 by TDPBF16PS, 16 x 16 x 32 multiply-adds per
// instruction against 16 per f32 FMA. The activations are rounded to bf16 on the way in (as
// PyTorch's bf16 model and our GPU prefill round them); the weights are the checkpoint's bf16,
// read in place.
//
// The product is formed transposed, y^T = W x^T: a W tile is 16 weight rows x 32 inputs, which is
// W's own row-major layout (tileloadd with the row stride: no packing of the weights), and the
// activations take the pair layout of the second operand (xv[k / 2][m] = x[m][k], x[m][k + 1] as
// two bf16), packed once per call; in-features past the last multiple of 32 join in f32 on the
// scratch. Each work item owns kChunkCols output columns, accumulated in an f32 scratch by 32 x 32
// tile blocks (prefill: per kKb-input block, 16 KB of W and 16 KB of xv, L1-sized; decode
// batches: per 32 weight rows over all inputs), then transposed into y with the bias. Each
// output sums its products in one order whatever the number of rows, so a row's result never
// depends on the rows beside it.
#include "backend/cpu/cpu_matmul_amx.hpp"

#include <algorithm>
#include <vector>

#include "core/bf16.hpp"
#include "core/check.hpp"
#include "core/large_buffer.hpp"
#include "core/thread_pool.hpp"

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define MOXIN_HAVE_AMX_KERNELS 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(MOXIN_HAVE_AMX_KERNELS)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")
// GCC 12's intrinsics trip -Wmaybe-uninitialized on their own undefined vectors (bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "backend/cpu/cpu_amx_common.hpp"  // (after the pragmas: its transpose takes this file's target)
#endif  // MOXIN_HAVE_AMX_KERNELS

namespace moxin::cpu {

#if defined(MOXIN_HAVE_AMX_KERNELS)
namespace {

constexpr int64_t kKb = 256;          // inputs per block: a 32-row W block and a 32-row xv block of 16 KB each
constexpr int64_t kChunkCols = 128;   // output columns per work item (four 32-column tile blocks)
constexpr int64_t kMc = 512;          // activation rows per pass (xv and the scratch stay in L2)
// Up to this many activation rows (decode batches) the weights are the traffic, and the loop
// order changes (chunk): [14336 x 4096] at 8 rows 7.47 -> 4.65 ms, at 32 rows 8.22 -> 5.48.
constexpr int64_t kFewRows = 64;

// Palette 1, tiles 0-3 the 2 x 2 accumulators (16 weight rows x 16 f32 activation columns), 4-5 the
// W tiles (16 rows x 32 bf16), 6-7 the xv tiles (16 input pairs x 16 activation rows x 2 bf16):
// all 16 rows of 64 bytes.
void configure_tiles() {
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.colsb[t] = 64;
    config.rows[t] = 16;
  }
  _tile_loadconfig(&config);
}

// Rows m0 .. m0 + mc of x as bf16 pairs: xv[p * ldxv + m] = x[m0 + m][2p], x[m0 + m][2p + 1]
// (rounded to nearest even; the even input in the low half, as TDPBF16PS pairs them), for pairs
// [p0, p1) (multiples of 16); activation rows mc .. ldxv are zeros.
void pack_pairs(const float* x, int64_t ldx, int64_t m0, int64_t mc, int64_t p0, int64_t p1, uint32_t* xv,
                int64_t ldxv) {
  const __m512i lane_offsets = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(static_cast<int>(ldxv)));
  // 16 pairs at a time: one row's 32 floats become 16 pairs down a column of xv.
  for (int64_t p = p0; p < p1; p += 16)
    for (int64_t m = 0; m < ldxv; ++m) {
      __m512i packed = _mm512_setzero_si512();
      if (m < mc) {
        const float* row = x + (m0 + m) * ldx + 2 * p;
        packed = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(_mm512_loadu_ps(row + 16), _mm512_loadu_ps(row)));
      }
      _mm512_i32scatter_epi32(xv + p * ldxv + m, lane_offsets, packed, 4);
    }
}

// C (32 weight rows x 16 * kColTiles activation rows, f32, row stride ldc floats) += W[32 rows,
// k0 : k0 + kb] x xv[k0 / 2 : (k0 + kb) / 2, those activation rows]^T; `first`: C starts at zero.
// kColTiles = 1 where at most 16 activation rows are real (a decode batch): the zero columns of
// the second xv tile would double the tile products for nothing (1 row: 4.67 -> 4.18 ms for
// [14336 x 4096]).
template <int kColTiles>
void tile_block(const uint16_t* w, int64_t ldw, const uint32_t* xv, int64_t ldxv, int64_t k0, int64_t kb, float* c,
                int64_t ldc, bool first) {
  const int64_t c_stride = ldc * 4;
  if (first) {
    _tile_zero(0);
    _tile_zero(2);
    if constexpr (kColTiles == 2) {
      _tile_zero(1);
      _tile_zero(3);
    }
  } else {
    _tile_loadd(0, c, c_stride);
    _tile_loadd(2, c + 16 * ldc, c_stride);
    if constexpr (kColTiles == 2) {
      _tile_loadd(1, c + 16, c_stride);
      _tile_loadd(3, c + 16 * ldc + 16, c_stride);
    }
  }
  const int64_t w_stride = ldw * 2, xv_stride = ldxv * 4;
  for (int64_t k = k0; k < k0 + kb; k += 32) {
    _tile_loadd(4, w + k, w_stride);
    _tile_loadd(5, w + 16 * ldw + k, w_stride);
    _tile_loadd(6, xv + (k / 2) * ldxv, xv_stride);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(2, 5, 6);
    if constexpr (kColTiles == 2) {
      _tile_loadd(7, xv + (k / 2) * ldxv + 16, xv_stride);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, c, c_stride);
  _tile_stored(2, c + 16 * ldc, c_stride);
  if constexpr (kColTiles == 2) {
    _tile_stored(1, c + 16, c_stride);
    _tile_stored(3, c + 16 * ldc + 16, c_stride);
  }
}

// Output columns [n0, n0 + nc) (nc a multiple of 32) of activation rows m0 .. m0 + mc: the
// first tiled_k inputs on the tiles, then the rest (fewer than 32: a tile row cannot stop short
// of 64 bytes, and reconfiguring the tiles would zero them) one by one in f32 on the scratch from
// x_tail ([k][ldxv], the rounded activations), each in the same order whatever the rows.
void chunk(const WeightView& w, int64_t tiled_k, const uint32_t* xv, const float* x_tail, int64_t ldxv, int64_t m0,
           int64_t mc, int64_t n0, int64_t nc, const float* bias, float* y, int64_t ldy, float* scratch) {
  const auto* wd = static_cast<const uint16_t*>(w.data);
  if (ldxv <= kFewRows) {
    // Each 32-row W block streams all of its inputs before the next starts (32 read streams,
    // not 128); the small xv comes back from L2 for every block.
    for (int64_t n = 0; n < nc; n += 32) {
      if (mc <= 16) {
        tile_block<1>(wd + (n0 + n) * w.ld, w.ld, xv, ldxv, 0, tiled_k, scratch + n * ldxv, ldxv, true);
      } else {
        for (int64_t m = 0; m < ldxv; m += 32)
          tile_block<2>(wd + (n0 + n) * w.ld, w.ld, xv + m, ldxv, 0, tiled_k, scratch + n * ldxv + m, ldxv, true);
      }
    }
  } else {
    // A kKb-input W block (16 KB, L1) meets every activation block before the next inputs.
    for (int64_t k0 = 0; k0 < tiled_k; k0 += kKb) {
      const int64_t kb = std::min(kKb, tiled_k - k0);
      for (int64_t n = 0; n < nc; n += 32)
        for (int64_t m = 0; m < ldxv; m += 32)
          tile_block<2>(wd + (n0 + n) * w.ld, w.ld, xv + m, ldxv, k0, kb, scratch + n * ldxv + m, ldxv, k0 == 0);
    }
  }
  for (int64_t n = 0; n < nc; ++n) {
    float* column = scratch + n * ldxv;
    const uint16_t* w_tail = wd + (n0 + n) * w.ld + tiled_k;
    for (int64_t k = 0; k < w.cols - tiled_k; ++k) {
      const __m512 weight = _mm512_set1_ps(bf16_to_f32(w_tail[k]));
      for (int64_t m = 0; m < ldxv; m += 16)
        _mm512_storeu_ps(column + m, _mm512_fmadd_ps(_mm512_loadu_ps(x_tail + k * ldxv + m), weight,
                                                     _mm512_loadu_ps(column + m)));
    }
  }
  for (int64_t n = 0; n < nc; n += 16) {
    const __m512 b = bias ? _mm512_loadu_ps(bias + n0 + n) : _mm512_setzero_ps();
    for (int64_t m = 0; m < mc; m += 16) {
      __m512 columns[16];
      for (int i = 0; i < 16; ++i) columns[i] = _mm512_loadu_ps(scratch + (n + i) * ldxv + m);
      store_transposed(columns, static_cast<int>(std::min<int64_t>(16, mc - m)), 16, b, y + (m0 + m) * ldy + n0 + n,
                       ldy);
    }
  }
}

}  // namespace

int64_t matmul_amx_bf16(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const WeightView& w,
                        const float* bias, float* y, int64_t ldy) {
  const int64_t columns = w.rows / 32 * 32, tiled_k = w.cols / 32 * 32, tail_k = w.cols - tiled_k;
  if (!amx_bf16_supported() || w.dtype != DType::BF16 || columns == 0 || tiled_k == 0 || M <= 0) return 0;
  const int64_t chunks = (columns + kChunkCols - 1) / kChunkCols;
  const int64_t pairs = tiled_k / 2;
  for (int64_t m0 = 0; m0 < M; m0 += kMc) {
    const int64_t mc = std::min(kMc, M - m0);
    // Up to 16 rows one xv tile wide (chunk reads no more): decode packs half the zero columns.
    const int64_t ldxv = mc <= 16 ? 16 : (mc + 31) / 32 * 32;
    // Reused across calls: decode calls this for every linear of every token, and a fresh
    // allocation of this size is a fresh mapping whose pages fault in on every call.
    thread_local std::vector<uint32_t, LargeAllocator<uint32_t>> xv_storage;
    xv_storage.resize(static_cast<size_t>(pairs * ldxv));
    uint32_t* const xv = xv_storage.data();
    // The inputs past tiled_k, rounded as the tiles' are, activation rows side by side.
    std::vector<float> x_tail(static_cast<size_t>(tail_k * ldxv), 0.0f);
    for (int64_t k = 0; k < tail_k; ++k)
      for (int64_t m = 0; m < mc; ++m)
        x_tail[static_cast<size_t>(k * ldxv + m)] = bf16_to_f32(f32_to_bf16(x[(m0 + m) * ldx + tiled_k + k]));
    const auto pack = [&](int64_t p0, int64_t p1) { pack_pairs(x, ldx, m0, mc, p0 * 16, std::min(pairs, p1 * 16), xv, ldxv); };
    const auto compute = [&](int64_t c0, int64_t c1) {
      std::vector<float> scratch(static_cast<size_t>(kChunkCols * ldxv));
      configure_tiles();
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t n0 = c * kChunkCols;
        chunk(w, tiled_k, xv, x_tail.data(), ldxv, m0, mc, n0, std::min(kChunkCols, columns - n0), bias, y,
              ldy, scratch.data());
      }
      _tile_release();
    };
    const int64_t pair_blocks = (pairs + 15) / 16;
    if (pool) {
      pool->parallel_for(pair_blocks, pack);
      pool->parallel_for(chunks, compute);
    } else {
      pack(0, pair_blocks);
      compute(0, chunks);
    }
  }
  return columns;
}

void round_rows_to_bf16(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, int64_t K, float* out) {
  const auto rows = [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t k = 0; k < K; k += 16) {
        const __mmask16 lanes = K - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (K - k)) - 1);
        const __m256i bits = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(lanes, x + m * ldx + k)));
        const __m512i widened = _mm512_maskz_slli_epi32(lanes, _mm512_maskz_cvtepu16_epi32(lanes, bits), 16);
        _mm512_mask_storeu_ps(out + m * K + k, lanes, _mm512_castsi512_ps(widened));
      }
  };
  // A task rounds at least 64K inputs (the decode rows are a few KB each).
  if (pool) {
    pool->parallel_for(M, rows, std::max<int64_t>(1, (64 << 10) / K));
  } else {
    rows(0, M);
  }
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

// Compiled for the baseline ISA from here on.

bool amx_bf16_supported() {
  static const bool supported = [] {
    if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16") ||
        !__builtin_cpu_supports("avx512bf16") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl"))
      return false;
    // Linux hands out the 8 KB of tile state per process on request (arch_prctl
    // ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA); a kernel that refuses it keeps the f32 GEMM.
    constexpr long kArchReqXcompPerm = 0x1023;
    constexpr long kXfeatureXtileData = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtileData) == 0;
  }();
  return supported;
}

#else

bool amx_bf16_supported() { return false; }

int64_t matmul_amx_bf16(ThreadPool*, int64_t, const float*, int64_t, const WeightView&, const float*, float*, int64_t) {
  return 0;
}

void round_rows_to_bf16(ThreadPool*, int64_t, const float*, int64_t, int64_t, float*) {
  fail("[cpu] round_rows_to_bf16: this build has no AMX kernels (only the amx table calls it)");
}

#endif

}  // namespace moxin::cpu
