// Turns CUDA runtime and cuBLASLt status codes into moxin::Error naming the call, the source
// location and the driver's explanation. Every CUDA call in this backend goes through these.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "core/check.hpp"

namespace moxin::cuda {

inline void check_cuda(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess)
    fail("[cuda] ", call, " failed at ", file, ":", line, ": ", cudaGetErrorString(status));
}

inline void check_cublas(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS)
    fail("[cuda] ", call, " failed at ", file, ":", line, ": ", cublasLtGetStatusString(status));
}

}  // namespace moxin::cuda

#define MOXIN_CUDA_CHECK(call) ::moxin::cuda::check_cuda((call), #call, __FILE__, __LINE__)
#define MOXIN_CUBLAS_CHECK(call) ::moxin::cuda::check_cublas((call), #call, __FILE__, __LINE__)
