#include "backend/cpu/cpu_matmul.hpp"

#include <algorithm>
#include <cstdlib>
#include <memory>

#include "core/check.hpp"
#include "core/thread_pool.hpp"

namespace moxin::cpu {
namespace {

// Cache blocking of the GEMM. A kKc x kNc block of converted weights (512 KB) stays in L2
// while every activation row of the kMc block streams past it; one kGemmMR x kKc activation
// slice (16 KB) stays in L1 across the block's panels.
constexpr int64_t kKc = 512;
constexpr int64_t kNc = 256;
constexpr int64_t kMc = 1024;
static_assert(kNc % kGemmNR == 0);

// Converted weight panels, one buffer per thread, reused across calls.
float* panel_buffer() {
  struct Buffer {
    float* data = nullptr;
    ~Buffer() { std::free(data); }
  };
  thread_local Buffer buffer;
  if (!buffer.data) {
    buffer.data = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * kKc * kNc));
    MOXIN_CHECK(buffer.data != nullptr, "[cpu] matmul: out of memory for the weight panels");
  }
  return buffer.data;
}

// Output columns [n0, n1) of the GEMM on this thread.
void gemm_columns(const Kernels& kernels, int64_t M, const float* x, int64_t ldx,
                  const WeightView& w, int64_t n0, int64_t n1, const float* bias, float* y,
                  int64_t ldy) {
  float* panels = panel_buffer();
  const int64_t K = w.cols;
  for (int64_t ic = 0; ic < M; ic += kMc) {
    const int64_t mc = std::min(kMc, M - ic);
    for (int64_t jc = n0; jc < n1; jc += kNc) {
      const int64_t nc = std::min(kNc, n1 - jc);
      for (int64_t pc = 0; pc < K; pc += kKc) {
        const int64_t kc = std::min(kKc, K - pc);
        kernels.pack_panels(w, jc, nc, pc, kc, panels);
        for (int64_t ir = ic; ir < ic + mc; ir += kGemmMR) {
          const int mr = static_cast<int>(std::min<int64_t>(kGemmMR, ic + mc - ir));
          for (int64_t jr = 0; jr < nc; jr += kGemmNR) {
            const int nr = static_cast<int>(std::min<int64_t>(kGemmNR, nc - jr));
            kernels.gemm_tile(kc, x + ir * ldx + pc, ldx, mr, panels + (jr / kGemmNR) * kc * kGemmNR,
                              nr, y + ir * ldy + jc + jr, ldy, bias ? bias + jc + jr : nullptr,
                              pc > 0);
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
  if (M <= kGemvMaxRows) {
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
  const int64_t panels = (N + kGemmNR - 1) / kGemmNR;
  const auto columns = [&](int64_t p0, int64_t p1) {
    gemm_columns(kernels, M, x, ldx, w, p0 * kGemmNR, std::min(N, p1 * kGemmNR), bias, y, ldy);
  };
  if (pool) {
    pool->parallel_for(panels, columns);
  } else {
    columns(0, panels);
  }
}

}  // namespace moxin::cpu
