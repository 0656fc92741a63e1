// The prefill path's weights: the whole quantized matrix dequantized into a bf16 scratch that
// cuBLASLt then reads like a bf16 weight. One thread per code word; for 1024 tokens the GEMM's
// ~0.6 ms dwarfs this pass (codes read once, bf16 written once).
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/quant_format.cuh"

namespace moxin::cuda {
namespace {

template <int Bits, bool F32Scales>
__global__ void quant_dequantize_kernel(QuantMatrix w, uint32_t* __restrict__ out) {
  constexpr int kPerWord = 32 / Bits;
  constexpr uint32_t kMask = (1u << Bits) - 1;
  wait_for_prior_kernels();
  const int64_t words_per_row = w.cols / kPerWord;
  const int64_t groups = w.cols / w.group_size;
  const int64_t words = words_per_row * w.rows;
  const int words_per_group = w.group_size / kPerWord;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < words;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t row = i / words_per_row;
    const int64_t col_word = i % words_per_row;
    const float2 sb = unpack_scale_bias(
        load_scale_bias<F32Scales>(w.scale_bias, row * groups + col_word / words_per_group));
    const uint32_t word = __ldg(w.codes + i);
    uint32_t pairs[kPerWord / 2];
#pragma unroll
    for (int p = 0; p < kPerWord / 2; ++p)
      pairs[p] = dequantize_bf16x2(sb, (word >> (2 * p * Bits)) & kMask,
                                   (word >> ((2 * p + 1) * Bits)) & kMask);
    // kPerWord bf16 outputs per word: 16 bytes (4-bit) or 8 bytes (8-bit) at out + i * kPerWord / 2.
    if constexpr (kPerWord == 8)
      reinterpret_cast<uint4*>(out)[i] = make_uint4(pairs[0], pairs[1], pairs[2], pairs[3]);
    else
      reinterpret_cast<uint2*>(out)[i] = make_uint2(pairs[0], pairs[1]);
  }
}

template <int Bits, bool F32Scales>
void launch(const QuantMatrix& w, bf16_bits* out, cudaStream_t stream) {
  const int64_t words = int64_t{w.rows} * w.cols / (32 / Bits);
  launch_kernel("quant_dequantize_kernel", quant_dequantize_kernel<Bits, F32Scales>,
                elementwise_blocks(words), kElementwiseThreads, 0, stream, w,
                reinterpret_cast<uint32_t*>(out));
}

}  // namespace

void quant_dequantize_bf16(const QuantMatrix& w, bf16_bits* out, cudaStream_t stream) {
  if (w.rows == 0) return;
  if (w.bits == 4)
    w.f32_scales ? launch<4, true>(w, out, stream) : launch<4, false>(w, out, stream);
  else
    w.f32_scales ? launch<8, true>(w, out, stream) : launch<8, false>(w, out, stream);
}

}  // namespace moxin::cuda
