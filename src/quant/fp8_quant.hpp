// FP8 E4M3 decoder weights with one f32 scale per output channel (docs/model.md section 5):
// scale[r] = amax(|w[r, :]|) / 448 (1 for an all-zero row), code[r, k] = E4M3(w[r, k] / scale[r])
// rounded to nearest even, so w ~= e4m3_to_f32(code) * scale. The layout vLLM /
// compressed-tensors call "fp8 per-channel": <name>.weight F8_E4M3 [out, in] and
// <name>.weight_scale F32 [out].
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "core/large_buffer.hpp"

namespace moxin {

class ThreadPool;

struct Fp8Matrix {
  LargeVector<uint8_t> codes;  // [rows, cols] E4M3, on huge pages (core/large_buffer.hpp)
  std::vector<float> scales;   // [rows]
  int64_t rows = 0;
  int64_t cols = 0;
};

// Quantizes w [rows, cols] (BF16, F16 or F32, row-major); rows are split over the pool (may be
// null). Throws moxin::Error naming `name` for another dtype or a non-finite weight.
Fp8Matrix quantize_fp8(const void* w, DType dtype, int64_t rows, int64_t cols, ThreadPool* pool,
                       const std::string& name);

// out[(r - r0) * cols + k] = e4m3_to_f32(codes[r, k]) * scales[r] for rows r0 <= r < r1.
void dequantize_fp8_rows(const uint8_t* codes, const float* scales, int64_t cols, int64_t r0, int64_t r1,
                         float* out);

}  // namespace moxin
