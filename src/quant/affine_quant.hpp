// MLX-style affine group quantization (docs/model.md section 5): each run of `group_size`
// consecutive inputs of an output row is stored as w ~= scale * q + bias, q an unsigned
// `bits`-bit code packed little-endian into uint32 words; scales and biases keep the dtype
// of the original weights.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.hpp"

namespace moxin {

class ThreadPool;

// Throws moxin::Error unless bits is 4 or 8 and group_size 64 or 128 (`what` names the source).
void check_quant_format(int bits, int group_size, const std::string& what);

// Where quantized data lies (a checkpoint's mapping or a QuantizedMatrix): what kernels read.
struct QuantView {
  const uint32_t* codes = nullptr;  // [rows, cols * bits / 32]
  const void* scales = nullptr;     // [rows, cols / group_size] of scale_dtype
  const void* biases = nullptr;     // same shape and dtype
  DType scale_dtype = DType::BF16;
  int64_t rows = 0;
  int64_t cols = 0;
  int bits = 0;
  int group_size = 0;

  int64_t words_per_row() const { return cols * bits / 32; }
  int64_t groups_per_row() const { return cols / group_size; }
};

// Reads scale/bias number i of a BF16, F16 or F32 array as f32.
float load_scale(const void* data, DType dtype, int64_t i);

struct QuantizedMatrix {
  std::vector<uint32_t> codes;
  std::vector<uint8_t> scales;  // raw bytes of scale_dtype
  std::vector<uint8_t> biases;
  DType scale_dtype = DType::BF16;
  int64_t rows = 0;
  int64_t cols = 0;
  int bits = 0;
  int group_size = 0;

  QuantView view() const;
};

// Quantizes w [rows, cols] (BF16, F16 or F32, row-major) per group: scale = max((max - min) /
// (2^bits - 1), 1e-7) and bias = min, both rounded to the weights' dtype first, then
// q = clamp(round_half_even((w - bias) / scale), 0, 2^bits - 1) in f32 with the rounded values,
// so that dequantization reproduces exactly what was optimized. Rows are split over the pool
// (may be null). `name` is for error messages.
QuantizedMatrix quantize_matrix(const void* w, DType dtype, int64_t rows, int64_t cols, int bits,
                                int group_size, ThreadPool* pool, const std::string& name);

// out[(r - r0) * q.cols + k] = scale * code + bias for rows r0 <= r < r1, in f32.
void dequantize_rows(const QuantView& q, int64_t r0, int64_t r1, float* out);

}  // namespace moxin
