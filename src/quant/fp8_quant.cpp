#include "quant/fp8_quant.hpp"

#include <cmath>

#include "core/check.hpp"
#include "core/fp8_e4m3.hpp"
#include "core/thread_pool.hpp"
#include "quant/affine_quant.hpp"

namespace moxin {
namespace {

void quantize_fp8_row(const void* w, DType dtype, int64_t row, const std::string& name, float* buffer,
                      Fp8Matrix& m) {
  load_weight_row(w, dtype, row, m.cols, buffer);
  float amax = 0.0f;
  for (int64_t k = 0; k < m.cols; ++k) {
    MOXIN_CHECK(std::isfinite(buffer[k]), "[quant] '", name, "' holds ", buffer[k], " at [", row, ", ", k,
                "]; only finite weights can be quantized to fp8");
    amax = std::fmax(amax, std::fabs(buffer[k]));
  }
  // An all-zero row (or one so small that amax / 448 underflows) gets scale 1: its codes are 0.
  float scale = amax / kE4M3Max;
  if (scale == 0.0f) scale = 1.0f;
  m.scales[static_cast<size_t>(row)] = scale;
  uint8_t* codes = m.codes.data() + row * m.cols;
  for (int64_t k = 0; k < m.cols; ++k) codes[k] = f32_to_e4m3(buffer[k] / scale);
}

}  // namespace

Fp8Matrix quantize_fp8(const void* w, DType dtype, int64_t rows, int64_t cols, ThreadPool* pool,
                       const std::string& name) {
  MOXIN_CHECK(dtype == DType::BF16 || dtype == DType::F16 || dtype == DType::F32, "[quant] '", name,
              "' has dtype ", dtype_name(dtype), "; only BF16, F16 and F32 weights can be quantized to fp8");
  MOXIN_CHECK(rows > 0 && cols > 0, "[quant] '", name, "' is [", rows, ", ", cols, "]: nothing to quantize");
  Fp8Matrix m;
  m.rows = rows;
  m.cols = cols;
  m.codes.resize(static_cast<size_t>(rows) * static_cast<size_t>(cols));
  m.scales.resize(static_cast<size_t>(rows));
  auto work = [&](int64_t begin, int64_t end) {
    std::vector<float> buffer(static_cast<size_t>(cols));
    for (int64_t r = begin; r < end; ++r) quantize_fp8_row(w, dtype, r, name, buffer.data(), m);
  };
  if (pool)
    pool->parallel_for(rows, work, 16);
  else
    work(0, rows);
  return m;
}

void dequantize_fp8_rows(const uint8_t* codes, const float* scales, int64_t cols, int64_t r0, int64_t r1,
                         float* out) {
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t k = 0; k < cols; ++k)
      out[(r - r0) * cols + k] = e4m3_to_f32(codes[r * cols + k]) * scales[r];
}

}  // namespace moxin
