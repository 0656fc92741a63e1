#include "backend/tensor.hpp"

#include "core/check.hpp"

namespace moxin {

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string Tensor::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Tensor Tensor::rows_view(int64_t begin, int64_t count) const {
  MOXIN_CHECK(begin >= 0 && count >= 0 && begin + count <= rows(), "[tensor] rows_view(", begin,
              ", ", count, ") outside ", shape_str());
  Tensor v = *this;
  v.shape = {count, cols()};
  v.data = static_cast<uint8_t*>(data) + static_cast<size_t>(begin * cols()) * dtype_size(dtype);
  if (row_scales != nullptr) v.row_scales = row_scales + begin;
  return v;
}

Tensor Tensor::reshaped(std::vector<int64_t> new_shape) const {
  Tensor v = *this;
  v.shape = std::move(new_shape);
  MOXIN_CHECK(v.numel() == numel(), "[tensor] cannot reshape ", shape_str(), " to ",
              v.shape_str());
  MOXIN_CHECK(row_scales == nullptr || v.cols() == cols(), "[tensor] cannot reshape ", shape_str(), " to ",
              v.shape_str(), ": its rows carry one scale each");
  return v;
}

}  // namespace moxin
