// A contiguous, row-major tensor living on one backend's device. Storage is shared, so a
// row slice is a cheap view. Activations use the backend's activation dtype; index tensors
// are I32.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.hpp"

namespace moxin {

enum class DeviceKind { CPU, CUDA };

struct Tensor {
  DType dtype = DType::F32;
  DeviceKind device = DeviceKind::CPU;  // whose memory `data` is in (set by the backend)
  std::vector<int64_t> shape;
  std::shared_ptr<void> storage;  // keeps the allocation alive
  void* data = nullptr;           // first element (device pointer on CUDA)
  // F8_E4M3 activations (a GPU backend's input for an FP8 linear, Backend::linear_input_dtype):
  // one f32 scale per row in the same memory as `data`, value = e4m3(code) * scale. Null otherwise.
  float* row_scales = nullptr;

  int64_t numel() const;
  int64_t cols() const { return shape.empty() ? 1 : shape.back(); }
  int64_t rows() const { return cols() == 0 ? 0 : numel() / cols(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  std::string shape_str() const;

  template <typename T>
  T* ptr() const { return static_cast<T*>(data); }

  // Rows [begin, begin + count) of a tensor viewed as [rows, cols]; shares storage.
  Tensor rows_view(int64_t begin, int64_t count) const;
  // Same storage, another shape with the same element count.
  Tensor reshaped(std::vector<int64_t> new_shape) const;
};

}  // namespace moxin
