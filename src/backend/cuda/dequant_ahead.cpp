#include "backend/cuda/dequant_ahead.hpp"

#include <algorithm>
#include <utility>

#include "backend/cuda/cuda_check.hpp"

namespace moxin::cuda {

DequantAhead::DequantAhead(std::shared_ptr<DeviceContext> context) : context_(std::move(context)) {
  MOXIN_CUDA_CHECK(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
  MOXIN_CUDA_CHECK(cudaEventCreateWithFlags(&main_done_, cudaEventDisableTiming));
  for (cudaEvent_t& e : ready_) MOXIN_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
}

DequantAhead::~DequantAhead() {
  cudaStreamSynchronize(side_);
  cudaEventDestroy(main_done_);
  for (cudaEvent_t e : ready_) cudaEventDestroy(e);
  cudaStreamDestroy(side_);
}

void DequantAhead::join(int b, cudaStream_t main) {
  if (!pending_[b]) return;
  MOXIN_CUDA_CHECK(cudaStreamWaitEvent(main, ready_[b]));
  pending_[b].reset();
}

// Both buffers at once, sized for the largest matrix so far; the old ones are freed in main's
// order after the side stream's work on them.
void DequantAhead::grow(int64_t elems, cudaStream_t main) {
  if (elems <= elems_) return;
  join(0, main);
  join(1, main);
  for (CudaLinear& d : dense_) d.weight = device_alloc(context_, static_cast<size_t>(elems) * 2);
  elems_ = elems;
}

const CudaLinear& DequantAhead::take(const CudaLinear& w, cudaStream_t main, int64_t elems) {
  grow(std::max({elems, w.dense_elems(), next_ ? next_->dense_elems() : 0}), main);
  MOXIN_CUDA_CHECK(cudaEventRecord(main_done_, main));
  int b = -1;
  for (int i = 0; i < 2 && b < 0; ++i)
    if (pending_[i] && pending_[i]->codes == w.codes) b = i;
  if (b >= 0) {
    join(b, main);
  } else {
    b = 1 - last_;
    join(b, main);
    dequantize_bf16(w, static_cast<bf16_bits*>(dense_[b].weight.get()), main);
  }
  const int other = 1 - b;
  join(other, main);  // an expectation that did not come true
  last_ = b;
  if (next_ && next_->codes != w.codes) {
    // The other buffer was last read by a GEMM enqueued on main before main_done_.
    MOXIN_CUDA_CHECK(cudaStreamWaitEvent(side_, main_done_));
    dequantize_bf16(*next_, static_cast<bf16_bits*>(dense_[other].weight.get()), side_);
    MOXIN_CUDA_CHECK(cudaEventRecord(ready_[other], side_));
    pending_[other] = std::move(next_);
  }
  next_.reset();
  return dense_[b];
}

}  // namespace moxin::cuda
