// MLX-style affine group quantization (docs/model.md section 5): each run of `group_size`
// consecutive inputs of an output row is stored as w ~= scale * q + bias, q an unsigned
// `bits`-bit code packed little-endian into uint32 words; scales and biases keep the dtype
// of the original weights.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "core/large_buffer.hpp"

namespace moxin {

class ThreadPool;

// Throws moxin::Error unless bits is 4 or 8 and group_size one of kQuantGroupSizes
// (io/quant_group_sizes.hpp; `what` names the source).
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

// Row `row` of w [rows, cols] (BF16, F16 or F32) as f32 into out[cols].
void load_weight_row(const void* w, DType dtype, int64_t row, int64_t cols, float* out);

// Reads scale/bias number i of a BF16, F16 or F32 array as f32.
float load_scale(const void* data, DType dtype, int64_t i);

struct QuantizedMatrix {
  // On huge pages (core/large_buffer.hpp): decode streams them on every token.
  LargeVector<uint32_t> codes;
  LargeVector<uint8_t> scales;  // raw bytes of scale_dtype
  LargeVector<uint8_t> biases;
  DType scale_dtype = DType::BF16;
  int64_t rows = 0;
  int64_t cols = 0;
  int bits = 0;
  int group_size = 0;

  QuantView view() const;
};

// How a group's scale and bias are chosen (the codes are then round_half_even((w - bias) / s),
// clamped to 0..2^bits - 1, in f32).
enum class QuantRounding {
  // Exactly as mlx.core.quantize (affine) does, bit for bit (tests/py/test_quant.py checks
  // against the real MLX): in f32, s = max((max - min) / (2^bits - 1), 1e-7), negated unless
  // |min| > |max|; edge = the larger-magnitude extreme; e = round_half_even(edge / s); if e != 0:
  // s = edge / e and bias = edge, else bias = 0. The codes use these f32 values; the stored s
  // and bias are rounded to the weights' dtype.
  Mlx,
  // s = max((max - min) / (2^bits - 1), 1e-7) and bias = min, rounded to the weights' dtype
  // before the codes are computed from them (dequantization reproduces what was optimized):
  // lower weight error at 8 bits (bench/results/quant-quality-tiny.txt), not MLX's bytes.
  MinMax,
};

// Quantizes w [rows, cols] (BF16, F16 or F32, row-major) per group; rows are split over the pool
// (may be null). `name` is for error messages.
QuantizedMatrix quantize_matrix(const void* w, DType dtype, int64_t rows, int64_t cols, int bits,
                                int group_size, ThreadPool* pool, const std::string& name,
                                QuantRounding rounding = QuantRounding::Mlx);

// out[(r - r0) * q.cols + k] = scale * code + bias for rows r0 <= r < r1, in f32.
void dequantize_rows(const QuantView& q, int64_t r0, int64_t r1, float* out);

}  // namespace moxin
