// Quantized prefill dequantizes each linear's weights to bf16 for cuBLASLt just before its GEMM:
// ~185 us of a 4-bit decoder layer's ~950 at 1024 tokens on an H100 (session 27), which keeps the
// quantized prefill slower than bf16's. The GEMMs are bound by the tensor cores, the
// dequantization by memory, so the two can share the GPU: given the next linear
// (Backend::linear_ahead), its matrix is dequantized on a side stream into a second buffer while
// the current GEMM runs. Two buffers alternate; every side-stream dequantization is joined into
// the main stream at the next take(), so none outlives the next quantized prefill linear, and the
// hinted linear's handles are held until then (its weights cannot be freed under it).
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <optional>

#include "backend/cuda/cuda_backend_impl.hpp"

namespace moxin::cuda {

class DequantAhead {
 public:
  explicit DequantAhead(std::shared_ptr<DeviceContext> context);
  ~DequantAhead();
  DequantAhead(const DequantAhead&) = delete;
  DequantAhead& operator=(const DequantAhead&) = delete;

  // The quantized linear that take() will be asked for next.
  void expect(const CudaLinear& next) { next_ = next; }
  // w's weights as bf16 in one of the buffers, ready in `main`'s order (buffers of `elems`
  // elements at least): the expected matrix where it is w, else dequantized now on `main`. Then
  // the next expected linear, if any, starts on the side stream into the other buffer.
  const CudaLinear& take(const CudaLinear& w, cudaStream_t main, int64_t elems);

 private:
  void grow(int64_t elems, cudaStream_t main);
  // main waits for the side stream's work on buffer b, which then holds nothing pending.
  void join(int b, cudaStream_t main);

  std::shared_ptr<DeviceContext> context_;
  cudaStream_t side_ = nullptr;
  cudaEvent_t main_done_ = nullptr;  // main's work up to take(): the last GEMM's reads included
  cudaEvent_t ready_[2] = {};        // the side stream's dequantization into buffer i
  CudaLinear dense_[2];              // weight: the buffers
  int64_t elems_ = 0;
  std::optional<CudaLinear> pending_[2];  // what the side stream dequantizes into buffer i
  std::optional<CudaLinear> next_;
  int last_ = 0;  // the buffer the last GEMM read
};

}  // namespace moxin::cuda
