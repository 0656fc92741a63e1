// Backend::read_i32_async on the GPU: a copy into pinned host memory, in stream order, and an
// event after it. The pinned buffers are kept for the next reads: allocating or freeing pinned
// memory can synchronize the device, which is what an asynchronous read is there to avoid.
#include <algorithm>
#include <mutex>
#include <vector>

#include "backend/cuda/cuda_backend_impl.hpp"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/tensor_checks.hpp"

namespace moxin::cuda {

// Pinned buffers with their events, handed out one per outstanding read and taken back when
// the read ends. Shared with the reads, so a read may outlive the backend.
class PinnedI32Pool {
 public:
  struct Buffer {
    int32_t* data = nullptr;
    size_t capacity = 0;
    cudaEvent_t copied = nullptr;
  };

  ~PinnedI32Pool() {
    for (Buffer& b : free_) {
      cudaEventDestroy(b.copied);
      cudaFreeHost(b.data);
    }
  }

  Buffer take(size_t count) {
    std::lock_guard lock(mutex_);
    for (size_t i = 0; i < free_.size(); ++i)
      if (free_[i].capacity >= count) {
        Buffer b = free_[i];
        free_.erase(free_.begin() + static_cast<ptrdiff_t>(i));
        return b;
      }
    Buffer b;
    b.capacity = std::max<size_t>(count, 1024);  // a step's ids: one size serves every batch
    MOXIN_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&b.data), b.capacity * sizeof(int32_t)));
    MOXIN_CUDA_CHECK(cudaEventCreateWithFlags(&b.copied, cudaEventDisableTiming));
    return b;
  }

  void give_back(Buffer b) {
    std::lock_guard lock(mutex_);
    free_.push_back(b);
  }

 private:
  std::mutex mutex_;
  std::vector<Buffer> free_;
};

namespace {

class PinnedI32Read final : public I32Readback {
 public:
  PinnedI32Read(std::shared_ptr<PinnedI32Pool> pool, PinnedI32Pool::Buffer buffer, size_t count)
      : pool_(std::move(pool)), buffer_(buffer), count_(count) {}
  // The copy may still be landing in the buffer: it goes back to the pool only once it has.
  ~PinnedI32Read() override {
    cudaEventSynchronize(buffer_.copied);
    pool_->give_back(buffer_);
  }
  PinnedI32Read(const PinnedI32Read&) = delete;
  PinnedI32Read& operator=(const PinnedI32Read&) = delete;

  std::span<const int32_t> wait() override {
    MOXIN_CUDA_CHECK(cudaEventSynchronize(buffer_.copied));
    return {buffer_.data, count_};
  }

 private:
  std::shared_ptr<PinnedI32Pool> pool_;
  PinnedI32Pool::Buffer buffer_;
  size_t count_;
};

}  // namespace

std::unique_ptr<I32Readback> CudaBackend::read_i32_async(const Tensor& t) {
  require(t, DType::I32, "read_i32_async", "t");
  if (!pinned_) pinned_ = std::make_shared<PinnedI32Pool>();
  const auto count = static_cast<size_t>(t.numel());
  PinnedI32Pool::Buffer buffer = pinned_->take(count);
  if (count)
    MOXIN_CUDA_CHECK(cudaMemcpyAsync(buffer.data, t.data, count * sizeof(int32_t), cudaMemcpyDeviceToHost, stream()));
  MOXIN_CUDA_CHECK(cudaEventRecord(buffer.copied, stream()));
  return std::make_unique<PinnedI32Read>(pinned_, buffer, count);
}

}  // namespace moxin::cuda
