// Activation conversions feeding the cuBLASLt bf16 GEMM: f32 rows -> bf16 rows, and the
// im2col of NHWC images for the patch-embedding convolution.
#include <cuda_bf16.h>

#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"

namespace moxin::cuda {
namespace {

__global__ void f32_to_bf16_kernel(const float* __restrict__ x, __nv_bfloat16* __restrict__ y,
                                   int64_t count) {
  wait_for_prior_kernels();
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x)
    y[i] = __float2bfloat16_rn(x[i]);
}

// One thread per output element; column c = (channel * patch + ky) * patch + kx.
__global__ void im2col_kernel(const float* __restrict__ images, int height, int width, int patch,
                              int64_t row_begin, int64_t rows, __nv_bfloat16* __restrict__ out) {
  wait_for_prior_kernels();
  const int cols = 3 * patch * patch;
  const int grid_w = width / patch;
  const int patches_per_image = (height / patch) * grid_w;
  const int64_t count = rows * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t row = row_begin + i / cols;
    const int col = static_cast<int>(i % cols);
    const int64_t image = row / patches_per_image;
    const int p = static_cast<int>(row % patches_per_image);
    const int channel = col / (patch * patch);
    const int ky = (col / patch) % patch;
    const int kx = col % patch;
    const int py = (p / grid_w) * patch + ky;
    const int px = (p % grid_w) * patch + kx;
    out[i] = __float2bfloat16_rn(images[((image * height + py) * width + px) * 3 + channel]);
  }
}

}  // namespace

void activations_to_bf16(const float* x, bf16_bits* y, int64_t count, cudaStream_t stream) {
  if (count == 0) return;
  launch_kernel("f32_to_bf16_kernel", f32_to_bf16_kernel, elementwise_blocks(count),
                kElementwiseThreads, 0, stream, x, reinterpret_cast<__nv_bfloat16*>(y), count);
}

void im2col_bf16(const float* images, int height, int width, int patch, int64_t row_begin,
                 int64_t rows, bf16_bits* out, cudaStream_t stream) {
  const int64_t count = rows * 3 * patch * patch;
  if (count == 0) return;
  launch_kernel("im2col_kernel", im2col_kernel, elementwise_blocks(count), kElementwiseThreads, 0,
                stream, images, height, width, patch, row_begin, rows,
                reinterpret_cast<__nv_bfloat16*>(out));
}

}  // namespace moxin::cuda
