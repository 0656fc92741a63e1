// Portable kernels: plain C++ that the compiler vectorizes for the baseline ISA. They define
// the results the SIMD kernels must reproduce (up to f32 summation order).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "backend/cpu/cpu_kernels.hpp"
#include "core/bf16.hpp"
#include "core/check.hpp"
#include "core/fp8_kv.hpp"

namespace moxin::cpu {
namespace {

// Register tile of the GEMM: 8 activation rows x 32 weight rows.
constexpr int kTileRows = 8;
constexpr int kPanelWidth = 32;

// The threshold every table had before each got its own (measured with the AVX-512 kernels;
// the portable ones run only where no SIMD table does, and were not tuned).
constexpr int64_t kGemvMaxRows = 128;

// Converts n consecutive weights starting at element `offset` of the matrix to f32.
void weights_to_f32(const WeightView& w, int64_t offset, int64_t n, float* out) {
  switch (w.dtype) {
    case DType::F32:
      std::memcpy(out, static_cast<const float*>(w.data) + offset, static_cast<size_t>(n) * 4);
      return;
    case DType::BF16: {
      const uint16_t* src = static_cast<const uint16_t*>(w.data) + offset;
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(src[i]);
      return;
    }
    case DType::F16: {
      const uint16_t* src = static_cast<const uint16_t*>(w.data) + offset;
      for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(src[i]);
      return;
    }
    default:
      fail("[cpu] matmul: weights of dtype ", dtype_name(w.dtype), " are not supported");
  }
}

// Eight interleaved partial sums: the compiler can keep them in one vector register.
float dot(const float* a, const float* b, int64_t n) {
  float partial[8] = {};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int j = 0; j < 8; ++j) partial[j] += a[k + j] * b[k + j];
  for (; k < n; ++k) partial[k % 8] += a[k] * b[k];
  return ((partial[0] + partial[4]) + (partial[1] + partial[5])) +
         ((partial[2] + partial[6]) + (partial[3] + partial[7]));
}

void softmax(float* x, int64_t n, float scale) {
  float max = scale * x[0];
  for (int64_t i = 0; i < n; ++i) max = std::max(max, scale * x[i]);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(scale * x[i] - max);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void attend(const float* q, int64_t G, const float* keys, const float* values, const int64_t* rows,
            int64_t n, int64_t D, float scale, float* scores, float* y) {
  for (int64_t g = 0; g < G; ++g) {
    const float* qg = q + g * D;
    float* yg = y + g * D;
    for (int64_t i = 0; i < n; ++i) scores[i] = dot(qg, keys + rows[i], D);
    softmax(scores, n, scale);
    for (int64_t d = 0; d < D; ++d) yg[d] = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      const float* v = values + rows[i];
      for (int64_t d = 0; d < D; ++d) yg[d] += scores[i] * v[d];
    }
  }
}

// 1 + erf(z) = erfc(-z), evaluated in double: no cancellation for negative x.
void gelu_erf(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    x[i] = static_cast<float>(0.5 * x[i] * std::erfc(-static_cast<double>(x[i]) * 0.70710678118654752440));
}

void silu_mul(const float* gate, const float* up, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void gemv(const WeightView& w, int64_t n0, int64_t n1, const float* x, int64_t ldx, int64_t M,
          const float* bias, float* y, int64_t ldy) {
  // One converted weight row at a time (the row buffer lives on the heap: K can be large).
  float* row = static_cast<float*>(std::malloc(static_cast<size_t>(std::max<int64_t>(w.cols, 1)) * 4));
  MOXIN_CHECK(row != nullptr, "[cpu] matmul: out of memory");
  for (int64_t n = n0; n < n1; ++n) {
    weights_to_f32(w, n * w.ld, w.cols, row);
    const float b = bias ? bias[n] : 0.0f;
    for (int64_t m = 0; m < M; ++m) y[m * ldy + n] = b + dot(x + m * ldx, row, w.cols);
  }
  std::free(row);
}

void pack_panels(const WeightView& w, int64_t n0, int64_t nc, int64_t k0, int64_t kc,
                 float* panels) {
  float* row = static_cast<float*>(std::malloc(static_cast<size_t>(std::max<int64_t>(kc, 1)) * 4));
  MOXIN_CHECK(row != nullptr, "[cpu] matmul: out of memory");
  const int64_t num_panels = (nc + kPanelWidth - 1) / kPanelWidth;
  for (int64_t p = 0; p < num_panels; ++p) {
    float* panel = panels + p * kc * kPanelWidth;
    for (int j = 0; j < kPanelWidth; ++j) {
      const int64_t r = p * kPanelWidth + j;
      if (r < nc) {
        weights_to_f32(w, (n0 + r) * w.ld + k0, kc, row);
        for (int64_t k = 0; k < kc; ++k) panel[k * kPanelWidth + j] = row[k];
      } else {
        for (int64_t k = 0; k < kc; ++k) panel[k * kPanelWidth + j] = 0.0f;
      }
    }
  }
  std::free(row);
}

void gemm_tile(int64_t kc, const float* a, int64_t lda, int mr, const float* panel, int nr,
               float* c, int64_t ldc, const float* bias, bool accumulate) {
  float acc[kTileRows][kPanelWidth] = {};
  for (int64_t k = 0; k < kc; ++k) {
    const float* b = panel + k * kPanelWidth;
    for (int i = 0; i < mr; ++i) {
      const float ai = a[i * lda + k];
      for (int j = 0; j < kPanelWidth; ++j) acc[i][j] += ai * b[j];
    }
  }
  for (int i = 0; i < mr; ++i) {
    float* ci = c + i * ldc;
    for (int j = 0; j < nr; ++j) {
      if (accumulate) {
        ci[j] += acc[i][j];
      } else {
        ci[j] = (bias ? bias[j] : 0.0f) + acc[i][j];
      }
    }
  }
}

void rms_norm(const float* x, const float* w, float eps, int64_t n, float* y) {
  double sq = 0;
  for (int64_t c = 0; c < n; ++c) sq += static_cast<double>(x[c]) * x[c];
  const float scale = static_cast<float>(1.0 / std::sqrt(sq / static_cast<double>(n) + eps));
  for (int64_t c = 0; c < n; ++c) y[c] = w[c] * (x[c] * scale);
}

void add_rms_norm(float* x, const float* residual, const float* w, float eps, int64_t n, float* y) {
  for (int64_t c = 0; c < n; ++c) x[c] += residual[c];
  rms_norm(x, w, eps, n, y);
}

void layer_norm(const float* x, const float* w, const float* b, float eps, int64_t n, float* y) {
  double sum = 0;
  for (int64_t c = 0; c < n; ++c) sum += x[c];
  const double mean = sum / static_cast<double>(n);
  double sq = 0;
  for (int64_t c = 0; c < n; ++c) sq += (x[c] - mean) * (x[c] - mean);
  const double rstd = 1.0 / std::sqrt(sq / static_cast<double>(n) + eps);
  for (int64_t c = 0; c < n; ++c) y[c] = static_cast<float>((x[c] - mean) * rstd * w[c] + b[c]);
}

void rope(const float* x, const float* cos, const float* sin, int64_t half, float* out) {
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = x[i], x2 = x[i + half];
    out[i] = x1 * cos[i] - x2 * sin[i];
    out[i + half] = x2 * cos[i] + x1 * sin[i];
  }
}

uint64_t read_stream(const uint8_t* data, int64_t bytes) {
  uint64_t acc[8] = {};
  for (int64_t i = 0; i < bytes; i += 64) {
    uint64_t line[8];
    std::memcpy(line, data + i, 64);
    for (int j = 0; j < 8; ++j) acc[j] += line[j];
  }
  return acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
}

}  // namespace

const Kernels& generic_kernels() {
  static const Kernels table{"generic", kTileRows,  kPanelWidth, kGemvMaxRows, gemv,
                             pack_panels, gemm_tile, attend, softmax, gelu_erf, silu_mul, rms_norm,
                             add_rms_norm, layer_norm, rope, read_stream, moxin::widen_e4m3, nullptr};
  return table;
}

}  // namespace moxin::cpu
