// Streams tensors from the mapped checkpoint to device memory through two pinned staging
// buffers (convert chunk i+1 on the host while chunk i is copied), converting the element
// type on the way. No host copy of a tensor outlives the call.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "core/dtype.hpp"
#include "io/safetensors.hpp"

namespace moxin::cuda {

class WeightUploader {
 public:
  explicit WeightUploader(size_t chunk_bytes);
  ~WeightUploader();
  WeightUploader(const WeightUploader&) = delete;
  WeightUploader& operator=(const WeightUploader&) = delete;

  // Copies `src` (F32, F16 or BF16) to `dst` as `dst_type` (F32 or BF16), asynchronously on
  // `stream`; the staging buffers are reused only after their previous copy finished.
  void upload(const TensorInfo& src, DType dst_type, void* dst, cudaStream_t stream);

 private:
  static constexpr int kBuffers = 2;
  size_t chunk_bytes_;
  void* staging_[kBuffers] = {};
  cudaEvent_t done_[kBuffers] = {};
  int next_ = 0;
};

}  // namespace moxin::cuda
