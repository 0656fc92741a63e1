// The bf16-weight linears on AVX-512 BF16 dot products (cpu_matmul_avx512bf16.cpp): for CPUs that
// have VDPBF16PS but no AMX tiles (AMD Zen 4 and 5, Intel Cooper Lake, VMs that hide AMX).
#pragma once

#include <cstdint>

#include "backend/cpu/cpu_kernels.hpp"

namespace moxin {
class ThreadPool;
}

namespace moxin::cpu {

// Whether this build and CPU run AVX-512 BF16 (with F, BW and VL).
bool avx512_bf16_supported();

// y[m * ldy + n] = bias[n] + sum_k bf16(x[m * ldx + k]) * W[n, k] for m < M, n < W.rows: the
// activations rounded to bf16 (nearest even), each output one dot product over all of k in f32
// (16 lanes of pairs, then one fixed reduction), so its bits depend on neither M nor the thread
// count. Returns W.rows, or 0 (having written nothing) where AVX-512 BF16 is missing or W is not
// bf16. Inputs and products that are bf16 subnormals count as zero (VDPBF16PS), as on AMX.
int64_t matmul_avx512_bf16(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const WeightView& w,
                           const float* bias, float* y, int64_t ldy);

}  // namespace moxin::cpu
