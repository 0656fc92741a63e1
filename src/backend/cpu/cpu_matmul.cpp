#include "backend/cpu/cpu_matmul.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "backend/cpu/cpu_matmul_amx.hpp"
#include "core/check.hpp"
#include "core/thread_pool.hpp"

namespace moxin::cpu {
namespace {

// Cache blocking of the GEMM. A kKc x kNc block of converted weights (512 KB) stays in L2
// while every activation row of the kMc block streams past it; one gemm_mr x kKc activation
// slice (at most 16 KB) stays in L1 across the block's panels.
constexpr int64_t kKc = 512;
constexpr int64_t kNc = 256;
constexpr int64_t kMc = 512;
static_assert(kNc % 32 == 0, "whole panels of every table's width");

// The activation block is copied to rows this far apart: rows of x lie K floats apart, often a
// multiple of 4 KB, which puts a tile's rows in the same few L1 sets (on Zen 4 the AVX2 tile
// ran the down projection, K = 14336, at 61 against 80 GFLOP per core-second for K = 4096).
// kKc + 16 floats spreads them over the sets.
constexpr int64_t kRowStride = kKc + 16;

// Per-thread buffers, reused across calls: converted weight panels and the activation block.
struct GemmBuffers {
  float* panels = nullptr;
  float* rows = nullptr;
  GemmBuffers() {
    panels = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * kKc * kNc));
    rows = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * kMc * kRowStride));
    MOXIN_CHECK(panels != nullptr && rows != nullptr, "[cpu] matmul: out of memory for the GEMM buffers");
  }
  ~GemmBuffers() {
    std::free(panels);
    std::free(rows);
  }
  GemmBuffers(const GemmBuffers&) = delete;
  GemmBuffers& operator=(const GemmBuffers&) = delete;
};

GemmBuffers& gemm_buffers() {
  thread_local GemmBuffers buffers;
  return buffers;
}

// Output columns [n0, n1) of the GEMM on this thread. Per block of rows and of K, the
// activations are copied once and every weight block of the thread's columns passes over them.
void gemm_columns(const Kernels& kernels, int64_t M, const float* x, int64_t ldx,
                  const WeightView& w, int64_t n0, int64_t n1, const float* bias, float* y,
                  int64_t ldy) {
  GemmBuffers& buffers = gemm_buffers();
  const int64_t K = w.cols;
  for (int64_t ic = 0; ic < M; ic += kMc) {
    const int64_t mc = std::min(kMc, M - ic);
    for (int64_t pc = 0; pc < K; pc += kKc) {
      const int64_t kc = std::min(kKc, K - pc);
      for (int64_t i = 0; i < mc; ++i)
        std::memcpy(buffers.rows + i * kRowStride, x + (ic + i) * ldx + pc, sizeof(float) * static_cast<size_t>(kc));
      for (int64_t jc = n0; jc < n1; jc += kNc) {
        const int64_t nc = std::min(kNc, n1 - jc);
        kernels.pack_panels(w, jc, nc, pc, kc, buffers.panels);
        for (int64_t ir = 0; ir < mc; ir += kernels.gemm_mr) {
          const int mr = static_cast<int>(std::min<int64_t>(kernels.gemm_mr, mc - ir));
          for (int64_t jr = 0; jr < nc; jr += kernels.gemm_nr) {
            const int nr = static_cast<int>(std::min<int64_t>(kernels.gemm_nr, nc - jr));
            kernels.gemm_tile(kc, buffers.rows + ir * kRowStride, kRowStride, mr, buffers.panels + jr * kc, nr,
                              y + (ic + ir) * ldy + jc + jr, ldy, bias ? bias + jc + jr : nullptr, pc > 0);
          }
        }
      }
    }
  }
}

}  // namespace

void matmul(const Kernels& kernels, ThreadPool* pool, int64_t M, const float* x, int64_t ldx,
            const WeightView& w, const float* bias, float* y, int64_t ldy) {
  const int64_t N = w.rows;
  if (M <= 0 || N <= 0) return;
  if (w.cols == 0) {  // an empty sum: only the bias
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) y[m * ldy + n] = bias ? bias[n] : 0.0f;
    return;
  }
  // A table with a bf16 matrix engine takes bf16 weights on its tiles at every row count: each
  // output then sums the same rounded products in one order however many rows its step batches
  // (the server's batch invariance), and from 2 rows up the tiles outrun the GEMV (1 row: 2%
  // slower on [14336 x 4096]; 8 rows 1.7x, 32 rows 4x faster). Columns the tiles leave (past
  // the last multiple of 32) get the f32 GEMM on rounded copies of the activations, so they too
  // multiply what the tiles would.
  const bool on_tiles = kernels.bf16_tile_matmul != nullptr && w.dtype == DType::BF16;
  if (!on_tiles && M <= kernels.gemv_max_rows) {
    // Groups of 8 rows (the GEMV register tile); a chunk streams at least 64K weights.
    constexpr int64_t kGroup = 8;
    const int64_t groups = (N + kGroup - 1) / kGroup;
    const int64_t min_groups = std::max<int64_t>(1, (64 << 10) / (kGroup * w.cols));
    const auto rows = [&](int64_t g0, int64_t g1) {
      kernels.gemv(w, g0 * kGroup, std::min(N, g1 * kGroup), x, ldx, M, bias, y, ldy);
    };
    if (pool) {
      pool->parallel_for(groups, rows, min_groups);
    } else {
      rows(0, groups);
    }
    return;
  }
  // The columns a matrix engine took, if the table has one; the f32 GEMM takes the rest.
  const int64_t done = on_tiles ? kernels.bf16_tile_matmul(pool, M, x, ldx, w, bias, y, ldy) : 0;
  if (done == N) return;
  std::vector<float> rounded;
  if (on_tiles) {
    rounded.resize(static_cast<size_t>(M * w.cols));
    round_rows_to_bf16(pool, M, x, ldx, w.cols, rounded.data());
    x = rounded.data();
    ldx = w.cols;
  }
  const int64_t nr = kernels.gemm_nr;
  const int64_t panels = (N - done + nr - 1) / nr;
  const auto columns = [&](int64_t p0, int64_t p1) {
    gemm_columns(kernels, M, x, ldx, w, done + p0 * nr, std::min(N, done + p1 * nr), bias, y, ldy);
  };
  if (pool) {
    pool->parallel_for(panels, columns);
  } else {
    columns(0, panels);
  }
}

}  // namespace moxin::cpu
