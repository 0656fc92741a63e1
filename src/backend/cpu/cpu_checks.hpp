// Argument checks shared by the CPU ops: each throws moxin::Error naming the op, the
// argument and what was expected, before any kernel reads memory.
#pragma once

#include <cstdint>

#include "backend/tensor.hpp"
#include "core/check.hpp"

namespace moxin::cpu {

inline void check_dtype(const Tensor& t, DType dtype, const char* op, const char* what) {
  MOXIN_CHECK(t.device == DeviceKind::CPU, "[cpu] ", op, ": ", what, " ", t.shape_str(),
              " is in device memory (a tensor of another backend); create it with this backend");
  MOXIN_CHECK(t.dtype == dtype, "[cpu] ", op, ": ", what, " must be ", dtype_name(dtype),
              ", got ", dtype_name(t.dtype), " ", t.shape_str());
  MOXIN_CHECK(t.data != nullptr || t.numel() == 0, "[cpu] ", op, ": ", what, " ",
              t.shape_str(), " has no storage");
}

inline void check_f32(const Tensor& t, const char* op, const char* what) {
  check_dtype(t, DType::F32, op, what);
}

// a and b hold the same [rows, cols] matrix shape.
inline void check_same_matrix(const Tensor& a, const Tensor& b, const char* op, const char* a_name,
                              const char* b_name) {
  MOXIN_CHECK(a.rows() == b.rows() && a.cols() == b.cols(), "[cpu] ", op, ": ", a_name, " is ",
              a.shape_str(), " but ", b_name, " is ", b.shape_str());
}

// A per-column vector (norm weight, bias, scale) for `cols` columns.
inline void check_vector(const Tensor& v, int64_t cols, const char* op, const char* what) {
  check_f32(v, op, what);
  MOXIN_CHECK(v.numel() == cols, "[cpu] ", op, ": ", what, " is ", v.shape_str(), " but the input has ",
              cols, " columns");
}

// Some byte of a lies in b (ops that cannot work in place reject this).
inline bool overlaps(const Tensor& a, const Tensor& b) {
  const auto* a0 = static_cast<const uint8_t*>(a.data);
  const auto* b0 = static_cast<const uint8_t*>(b.data);
  return a.nbytes() > 0 && b.nbytes() > 0 && a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

}  // namespace moxin::cpu
