#include "quant/affine_quant.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "core/bf16.hpp"
#include "core/check.hpp"
#include "core/thread_pool.hpp"
#include "io/quant_group_sizes.hpp"

namespace moxin {
namespace {

// MLX's floor for the scale of a constant group, so codes never divide by zero.
constexpr float kMinScale = 1e-7f;

float load_element(const void* data, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::F32: return static_cast<const float*>(data)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(data)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(data)[i]);
    default: fail("[quant] dtype ", dtype_name(dtype), " cannot hold weights or scales");
  }
}

// Rounds v to `dtype` and stores it as element i of `out`; returns the rounded value.
float store_rounded(float v, DType dtype, uint8_t* out, int64_t i) {
  switch (dtype) {
    case DType::F32:
      std::memcpy(out + 4 * i, &v, 4);
      return v;
    case DType::BF16: {
      const uint16_t h = f32_to_bf16(v);
      std::memcpy(out + 2 * i, &h, 2);
      return bf16_to_f32(h);
    }
    default: {
      const uint16_t h = f32_to_f16(v);
      std::memcpy(out + 2 * i, &h, 2);
      return f16_to_f32(h);
    }
  }
}

// The smallest and largest of n values (n a multiple of 8): eight independent lanes that the
// compiler turns into vector min/max (std::minmax_element is a branchy scalar chain).
std::pair<float, float> group_range(const float* x, int n) {
  constexpr int kLanes = 8;
  float lo[kLanes], hi[kLanes];
  for (int l = 0; l < kLanes; ++l) lo[l] = hi[l] = x[l];
  for (int j = kLanes; j < n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      lo[l] = x[j + l] < lo[l] ? x[j + l] : lo[l];
      hi[l] = x[j + l] > hi[l] ? x[j + l] : hi[l];
    }
  for (int l = 1; l < kLanes; ++l) {
    lo[0] = lo[l] < lo[0] ? lo[l] : lo[0];
    hi[0] = hi[l] > hi[0] ? hi[l] : hi[0];
  }
  return {lo[0], hi[0]};
}

// round_half_even(clamp(v, 0, max_code)): equal to clamping nearbyint(v) (the ends are
// integers), NaN gives 0. Adding and removing 2^23 rounds to an integer, ties to even, for
// 0 <= v < 2^23 in the default rounding mode, and unlike nearbyint it vectorizes.
inline float code_of(float v, float max_code) {
  v = v > 0.0f ? v : 0.0f;
  v = v < max_code ? v : max_code;
  constexpr float kRoundingOffset = 8388608.0f;  // 2^23
  return (v + kRoundingOffset) - kRoundingOffset;
}

// A group's f32 scale and bias under `rounding` (see QuantRounding), stored as element i.
std::pair<float, float> group_scale_bias(float lo, float hi, float max_code, QuantRounding rounding,
                                         QuantizedMatrix& m, int64_t i) {
  float scale = std::max((hi - lo) / max_code, kMinScale);
  if (rounding == QuantRounding::MinMax)
    return {store_rounded(scale, m.scale_dtype, m.scales.data(), i),
            store_rounded(lo, m.scale_dtype, m.biases.data(), i)};
  const bool from_min = std::abs(lo) > std::abs(hi);
  if (!from_min) scale = -scale;
  const float edge = from_min ? lo : hi;
  const float edge_code = std::nearbyint(edge / scale);  // ties to even, as rint
  float bias = 0.0f;
  if (edge_code != 0.0f) {
    scale = edge / edge_code;
    bias = edge;
  }
  store_rounded(scale, m.scale_dtype, m.scales.data(), i);
  store_rounded(bias, m.scale_dtype, m.biases.data(), i);
  return {scale, bias};
}

void quantize_row(const void* w, DType dtype, int64_t row, int64_t cols, int bits, int group_size,
                  QuantRounding rounding, float* buffer, QuantizedMatrix& m) {
  load_weight_row(w, dtype, row, cols, buffer);
  const float max_code = static_cast<float>((1 << bits) - 1);
  const int per_word = 32 / bits;
  const int64_t groups = cols / group_size;
  uint32_t* codes = m.codes.data() + row * (cols / per_word);
  uint32_t q[128];  // one group's codes (group_size <= 128)
  for (int64_t g = 0; g < groups; ++g) {
    const float* x = buffer + g * group_size;
    const auto [lo, hi] = group_range(x, group_size);
    const auto [scale, bias] = group_scale_bias(lo, hi, max_code, rounding, m, row * groups + g);
    for (int j = 0; j < group_size; ++j) q[j] = static_cast<uint32_t>(code_of((x[j] - bias) / scale, max_code));
    for (int j = 0; j < group_size; j += per_word) {
      uint32_t word = 0;
      for (int e = 0; e < per_word; ++e) word |= q[j + e] << (bits * e);
      codes[(g * group_size + j) / per_word] = word;
    }
  }
}

}  // namespace

// Row `row` of w as f32 (one dtype dispatch per row, not per element: this loop and the code
// loop below vectorize, which makes load-time quantization of the full model take seconds).
void load_weight_row(const void* w, DType dtype, int64_t row, int64_t cols, float* out) {
  const int64_t base = row * cols;
  switch (dtype) {
    case DType::F32:
      std::memcpy(out, static_cast<const float*>(w) + base, static_cast<size_t>(cols) * sizeof(float));
      return;
    case DType::BF16: {
      const uint16_t* p = static_cast<const uint16_t*>(w) + base;
      for (int64_t k = 0; k < cols; ++k) out[k] = bf16_to_f32(p[k]);
      return;
    }
    default:
      for (int64_t k = 0; k < cols; ++k) out[k] = load_element(w, dtype, base + k);
  }
}

void check_quant_format(int bits, int group_size, const std::string& what) {
  MOXIN_CHECK(bits == 4 || bits == 8, "[quant] ", what, ": bits ", bits, " is not supported (use 4 or 8)");
  MOXIN_CHECK(is_quant_group_size(group_size), "[quant] ", what, ": group size ", group_size,
              " is not supported (use ", quant_group_sizes_text(), ")");
}

float load_scale(const void* data, DType dtype, int64_t i) { return load_element(data, dtype, i); }

QuantView QuantizedMatrix::view() const {
  return QuantView{codes.data(), scales.data(), biases.data(), scale_dtype, rows, cols, bits, group_size};
}

QuantizedMatrix quantize_matrix(const void* w, DType dtype, int64_t rows, int64_t cols, int bits,
                                int group_size, ThreadPool* pool, const std::string& name,
                                QuantRounding rounding) {
  check_quant_format(bits, group_size, name);
  MOXIN_CHECK(dtype == DType::BF16 || dtype == DType::F16 || dtype == DType::F32, "[quant] '", name,
              "' has dtype ", dtype_name(dtype), "; only BF16, F16 and F32 weights can be quantized");
  MOXIN_CHECK(rows > 0 && cols > 0 && cols % group_size == 0, "[quant] '", name, "' is [", rows, ", ",
              cols, "]: its input features are not a multiple of the group size ", group_size);
  QuantizedMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.bits = bits;
  m.group_size = group_size;
  m.scale_dtype = dtype;
  const size_t groups = static_cast<size_t>(rows) * static_cast<size_t>(cols / group_size);
  m.codes.resize(static_cast<size_t>(rows) * static_cast<size_t>(cols * bits / 32));
  m.scales.resize(groups * dtype_size(dtype));
  m.biases.resize(groups * dtype_size(dtype));
  auto work = [&](int64_t begin, int64_t end) {
    std::vector<float> buffer(static_cast<size_t>(cols));
    for (int64_t r = begin; r < end; ++r) quantize_row(w, dtype, r, cols, bits, group_size, rounding, buffer.data(), m);
  };
  if (pool)
    pool->parallel_for(rows, work, 16);
  else
    work(0, rows);
  return m;
}

void dequantize_rows(const QuantView& q, int64_t r0, int64_t r1, float* out) {
  const int per_word = 32 / q.bits;
  const uint32_t mask = (1u << q.bits) - 1;
  const int64_t groups = q.groups_per_row();
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t* codes = q.codes + r * q.words_per_row();
    float* y = out + (r - r0) * q.cols;
    for (int64_t g = 0; g < groups; ++g) {
      const float scale = load_scale(q.scales, q.scale_dtype, r * groups + g);
      const float bias = load_scale(q.biases, q.scale_dtype, r * groups + g);
      // Word by word: no division per element (this is also the portable prefill path).
      for (int64_t w = g * q.group_size / per_word; w < (g + 1) * q.group_size / per_word; ++w) {
        uint32_t word = codes[w];
        for (int e = 0; e < per_word; ++e, word >>= q.bits)
          y[w * per_word + e] = scale * static_cast<float>(word & mask) + bias;
      }
    }
  }
}

}  // namespace moxin
