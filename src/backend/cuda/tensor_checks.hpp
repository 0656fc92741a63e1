// Operand checks shared by the CUDA backend's op implementations: every op refuses a tensor of
// another backend, of the wrong dtype or shape, by name, before a kernel could misread it.
#pragma once

#include <initializer_list>

#include "backend/cuda/kernels.hpp"
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

// An op output that feeds a linear: f32, or bf16 where the linear takes bf16 activations; per-token
// E4M3 (codes and Tensor::row_scales) where `e4m3` says the op can write whole rows of it.
inline Activations require_activations(const Tensor& t, const char* op, const char* what, bool e4m3 = false) {
  require_device(t, op, what);
  const bool codes = t.dtype == DType::F8_E4M3;
  MOXIN_CHECK(t.dtype == DType::F32 || t.dtype == DType::BF16 || (codes && e4m3), "[cuda] ", op, ": ", what, " is ",
              dtype_name(t.dtype), ", expected f32 or bf16", e4m3 ? " or F8_E4M3" : "");
  MOXIN_CHECK(t.numel() == 0 || t.data != nullptr, "[cuda] ", op, ": ", what, " has no storage");
  MOXIN_CHECK(!codes || t.numel() == 0 || t.row_scales != nullptr, "[cuda] ", op, ": ", what,
              " is F8_E4M3 without row scales (make it with the backend's empty())");
  Activations a;
  if (t.dtype == DType::BF16)
    a.bf16 = data_of<bf16_bits>(t);
  else if (codes)
    a.e4m3 = {data_of<uint8_t>(t), t.row_scales};
  else
    a.f32 = data_of<float>(t);
  return a;
}

// The same for a linear's input.
inline InputActivations require_input_activations(const Tensor& t, const char* op, const char* what) {
  const Activations a = require_activations(t, op, what, true);
  return {a.f32, a.bf16, a.e4m3.codes, a.e4m3.scales};
}

inline void require_shape(const Tensor& t, int64_t rows, int64_t cols, const char* op, const char* what) {
  MOXIN_CHECK(t.rows() == rows && t.cols() == cols, "[cuda] ", op, ": ", what, " is ",
              t.shape_str(), ", expected [", rows, ", ", cols, "]");
}

}  // namespace moxin::cuda
