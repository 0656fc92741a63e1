// Operand checks shared by the CUDA backend's op implementations: every op refuses a tensor of
// another backend, of the wrong dtype or shape, by name, before a kernel could misread it.
#pragma once

#include <initializer_list>

#include "backend/tensor.hpp"
#include "core/check.hpp"

namespace moxin::cuda {

template <class T>
T* data_of(const Tensor& t) {
  return static_cast<T*>(t.data);
}

inline void require_device(const Tensor& t, const char* op, const char* what) {
  MOXIN_CHECK(t.device == DeviceKind::CUDA, "[cuda] ", op, ": ", what, " ", t.shape_str(),
              " is in host memory (a tensor of another backend); create it with this backend");
}

inline void require(const Tensor& t, DType dtype, const char* op, const char* what) {
  require_device(t, op, what);
  MOXIN_CHECK(t.dtype == dtype, "[cuda] ", op, ": ", what, " is ", dtype_name(t.dtype),
              ", expected ", dtype_name(dtype));
  MOXIN_CHECK(t.numel() == 0 || t.data != nullptr, "[cuda] ", op, ": ", what, " has no storage");
}

inline void require_f32(const char* op, std::initializer_list<const Tensor*> operands) {
  for (const Tensor* t : operands) require(*t, DType::F32, op, "an operand");
}

inline void require_shape(const Tensor& t, int64_t rows, int64_t cols, const char* op, const char* what) {
  MOXIN_CHECK(t.rows() == rows && t.cols() == cols, "[cuda] ", op, ": ", what, " is ",
              t.shape_str(), ", expected [", rows, ", ", cols, "]");
}

}  // namespace moxin::cuda
