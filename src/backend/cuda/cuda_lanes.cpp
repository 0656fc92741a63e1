// Lanes of the CUDA backend (cuda_backend_impl.hpp): each a stream with its own cuBLASLt
// workspace and bf16 scratch, so that Backend::run_concurrently can issue independent branches
// of ops (the two image encoders) on streams of their own and join them back.
#include <algorithm>

#include "backend/cuda/cuda_backend_impl.hpp"
#include "backend/cuda/cuda_check.hpp"
#include "core/check.hpp"

namespace moxin::cuda {

void CudaBackend::use_lane(size_t index) {
  current_lane_ = index;
  context_->current = lanes_[index].stream;
}

void CudaBackend::require_main_lane(const char* op) const {
  MOXIN_CHECK(current_lane_ == 0, "[cuda] ", op,
              " uses the backend's shared scratch: run it outside run_concurrently or in its first branch");
}

void CudaBackend::run_concurrently(std::span<const std::function<void()>> branches) {
  MOXIN_CHECK(current_lane_ == 0, "[cuda] run_concurrently: branches cannot nest");
  if (branches.size() <= 1) {
    for (const auto& branch : branches) branch();
    return;
  }
  // Lanes allocate device memory: new ones only outside a graph capture. Branches beyond the
  // lanes there are share lanes, one after another on each.
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  MOXIN_CUDA_CHECK(cudaStreamIsCapturing(lanes_[0].stream, &capturing));
  while (lanes_.size() < branches.size() && capturing == cudaStreamCaptureStatusNone) add_lane();
  const size_t lanes = std::min(lanes_.size(), branches.size());
  // Every branch starts after what lane 0 issued so far (a captured graph: the fork brings the
  // branch streams into the capture), and lane 0 continues after every branch (the join).
  MOXIN_CUDA_CHECK(cudaEventRecord(fork_, lanes_[0].stream));
  for (size_t i = 1; i < lanes; ++i) MOXIN_CUDA_CHECK(cudaStreamWaitEvent(lanes_[i].stream, fork_));
  const auto join = [&] {
    use_lane(0);
    for (size_t i = 1; i < lanes; ++i) {
      MOXIN_CUDA_CHECK(cudaEventRecord(lanes_[i].done, lanes_[i].stream));
      MOXIN_CUDA_CHECK(cudaStreamWaitEvent(lanes_[0].stream, lanes_[i].done));
    }
  };
  try {
    for (size_t i = 0; i < branches.size(); ++i) {
      use_lane(i % lanes);
      branches[i]();
    }
  } catch (...) {
    join();
    throw;
  }
  join();
}

void CudaBackend::add_lane() {
  Lane l;
  MOXIN_CUDA_CHECK(cudaStreamCreateWithFlags(&l.stream, cudaStreamNonBlocking));
  context_->branch_streams.push_back(l.stream);
  MOXIN_CUDA_CHECK(cudaEventCreateWithFlags(&l.done, cudaEventDisableTiming));
  l.gemm = std::make_unique<LtGemm>(kGemmWorkspaceBytes);
  l.scratch_bf16 = device_alloc(context_, static_cast<size_t>(scratch_elems_) * 2);
  lanes_.push_back(std::move(l));
}

}  // namespace moxin::cuda
