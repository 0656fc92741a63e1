#include "backend/cuda/weight_upload.hpp"

#include <algorithm>
#include <cstring>

#include "backend/cuda/cuda_check.hpp"
#include "core/bf16.hpp"

namespace moxin::cuda {
namespace {

float element_as_f32(const uint8_t* data, DType type, size_t i) {
  switch (type) {
    case DType::F32: {
      float f;
      std::memcpy(&f, data + 4 * i, 4);
      return f;
    }
    case DType::BF16: {
      uint16_t h;
      std::memcpy(&h, data + 2 * i, 2);
      return bf16_to_f32(h);
    }
    case DType::F16: {
      uint16_t h;
      std::memcpy(&h, data + 2 * i, 2);
      return f16_to_f32(h);
    }
    default:
      return 0.0f;  // rejected before conversion
  }
}

// Elements [first, first + count) of src, converted to dst_type, into out.
void convert_chunk(const TensorInfo& src, DType dst_type, size_t first, size_t count, void* out) {
  if (src.dtype == dst_type) {
    std::memcpy(out, src.data + first * dtype_size(src.dtype), count * dtype_size(src.dtype));
    return;
  }
  if (dst_type == DType::BF16) {
    auto* o = static_cast<uint16_t*>(out);
    for (size_t i = 0; i < count; ++i)
      o[i] = f32_to_bf16(element_as_f32(src.data, src.dtype, first + i));
  } else {
    auto* o = static_cast<float*>(out);
    for (size_t i = 0; i < count; ++i) o[i] = element_as_f32(src.data, src.dtype, first + i);
  }
}

}  // namespace

WeightUploader::WeightUploader(size_t chunk_bytes) : chunk_bytes_(chunk_bytes) {
  for (int i = 0; i < kBuffers; ++i) {
    MOXIN_CUDA_CHECK(cudaMallocHost(&staging_[i], chunk_bytes_));
    MOXIN_CUDA_CHECK(cudaEventCreateWithFlags(&done_[i], cudaEventDisableTiming));
  }
}

WeightUploader::~WeightUploader() {
  for (int i = 0; i < kBuffers; ++i) {
    if (done_[i]) {
      cudaEventSynchronize(done_[i]);
      cudaEventDestroy(done_[i]);
    }
    if (staging_[i]) cudaFreeHost(staging_[i]);
  }
}

void WeightUploader::upload(const TensorInfo& src, DType dst_type, void* dst, cudaStream_t stream) {
  MOXIN_CHECK(src.dtype == DType::F32 || src.dtype == DType::F16 || src.dtype == DType::BF16,
              "[cuda] tensor '", src.name, "' in ", src.file, " has dtype ", dtype_name(src.dtype),
              "; the CUDA backend loads F32, F16 or BF16 weights");
  MOXIN_CHECK(dst_type == DType::F32 || dst_type == DType::BF16, "[cuda] upload to ",
              dtype_name(dst_type), " is not supported");
  const size_t total = static_cast<size_t>(src.numel());
  const size_t out_size = dtype_size(dst_type);
  const size_t per_chunk = chunk_bytes_ / out_size;
  for (size_t first = 0; first < total; first += per_chunk) {
    const size_t count = std::min(per_chunk, total - first);
    const int b = next_;
    next_ = (next_ + 1) % kBuffers;
    MOXIN_CUDA_CHECK(cudaEventSynchronize(done_[b]));  // the buffer's previous copy is done
    convert_chunk(src, dst_type, first, count, staging_[b]);
    MOXIN_CUDA_CHECK(cudaMemcpyAsync(static_cast<uint8_t*>(dst) + first * out_size, staging_[b],
                                     count * out_size, cudaMemcpyHostToDevice, stream));
    MOXIN_CUDA_CHECK(cudaEventRecord(done_[b], stream));
  }
}

}  // namespace moxin::cuda
