// y = x W^T for a quantized W (docs/model.md section 5) with f32 activations: a GEMV that reads the
// packed codes directly for decode-sized M, and for prefill the codes on AMX-INT8 tiles or
// dequantized row blocks fed to the dense GEMM. Each output is scale * sum(q x) + bias * sum(x)
// per group, which equals an f32 matmul on the dequantized weights up to f32 rounding.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/cpu/cpu_kernels.hpp"
#include "quant/affine_quant.hpp"

namespace moxin {
class ThreadPool;
}

namespace moxin::cpu {

// Up to this many activation rows one GEMV reads the codes in place; beyond, the AMX-INT8 GEMM,
// chunks of GEMV rows, or row blocks dequantized once and shared by all rows through the dense
// GEMM (quant_matmul).
constexpr int64_t kQuantGemvMaxRows = 8;
// Where no AMX-INT8 GEMM runs, up to this many rows take the GEMV in chunks of kQuantGemvMaxRows:
// [14336 x 4096] 4-bit on an AVX-512 VNNI Xeon, 2 threads, chunks against dequantize + f32 GEMM:
// 9 rows 7.5 / 12.6 ms, 16 rows 11.5 / 16.8, 32 rows 23 / 30.8 (cpu_ops_bench BM_QuantLinear).
constexpr int64_t kQuantGemvChunkedMaxRows = 32;

// Rows n0 <= n < n1 of y[m * ldy + n] = sum_k x[m, k] W[n, k] for m < M. `xp` is x [M, K]
// contiguous, with each run of 32 inputs reordered as its 16 even then 16 odd elements when
// the codes are 4-bit (the order two nibbles of a byte decode into); xsum[m * groups + g] is
// the sum of group g of row m.
using QuantGemvFn = void (*)(const QuantView& w, int64_t n0, int64_t n1, const float* xp, int64_t M,
                             const float* xsum, float* y, int64_t ldy);

void quant_gemv_generic(const QuantView& w, int64_t n0, int64_t n1, const float* xp, int64_t M,
                        const float* xsum, float* y, int64_t ldy);
// nullptr when this build or CPU lacks AVX-512 F/BW/VL + FMA.
QuantGemvFn quant_gemv_avx512();
// nullptr when this build or CPU lacks AVX2 + FMA (cpu_quant_avx2.cpp).
QuantGemvFn quant_gemv_avx2();
// nullptr unless this is an ARM64 Linux build on a CPU with NEON (cpu_quant_neon.cpp).
QuantGemvFn quant_gemv_neon();

// out[(r - r0) * w.cols + k] = scale * code + bias for rows r0 <= r < r1: dequantize_rows,
// or its AVX-512 or AVX2 twin (nullptr when this build or CPU lacks AVX-512 F/BW/VL + FMA,
// or AVX2 + FMA).
using QuantDequantizeFn = void (*)(const QuantView& w, int64_t r0, int64_t r1, float* out);
QuantDequantizeFn quant_dequantize_avx512();
QuantDequantizeFn quant_dequantize_avx2();
QuantDequantizeFn quant_dequantize_neon();

// AVX-512 VNNI GEMV (cpu_quant_vnni.cpp): reads the codes as bytes and the activations split
// exactly into three signed bytes per input, y[m * ldy + n] = sum_k x[m * ldx + k] W[n, k] for
// all rows, threads over rows. False, with nothing written, when the build or CPU lacks VNNI or
// some activation is not finite (the integer split cannot carry inf or NaN).
bool quant_vnni_supported();
bool quant_gemv_vnni(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const QuantView& w, float* y,
                     int64_t ldy);

// AVX2 integer GEMV for 4-bit codes (cpu_quant_avx2_int.cpp): the VNNI kernel's exact 24-bit
// activation split, as a 16-bit and an 8-bit part, in vpmaddwd + vpmaddubsw. False, with nothing written, when the build or CPU lacks
// AVX2 + FMA + F16C, the codes are not 4-bit, or some activation is not finite.
bool quant_avx2_int_supported();
bool quant_gemv_avx2_int(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const QuantView& w, float* y,
                         int64_t ldy);
// The same kernel with AVX-VNNI's dot products (cpu_quant_avx_vnni.cpp): the AVX2 integer
// path's results bit for bit, in fewer instructions. False as quant_gemv_avx2_int, and also
// where the CPU lacks AVX-VNNI.
bool quant_avx_vnni_supported();
bool quant_gemv_avx_vnni(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const QuantView& w, float* y,
                         int64_t ldy);

// ARM64 integer GEMV on SDOT for 4-bit codes, USDOT for 8-bit ones (cpu_quant_neon_dotprod.cpp):
// the same exact 24-bit activation split. False, with nothing written, when the build or CPU lacks
// the dot-product instructions (for 8-bit codes, the I8MM ones), or some activation is not finite.
bool quant_neon_dotprod_supported();
bool quant_gemv_neon_dotprod(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const QuantView& w, float* y,
                             int64_t ldy);

// AMX-INT8 quantized GEMM for prefill row counts (cpu_quant_amx.cpp): the GEMVs' exact activation
// split against the codes as bytes, int32 sums per group on the tiles, so the result is the
// GEMVs' up to f32 rounding. False, with nothing written, when the build or CPU lacks AMX-INT8
// (or Linux withholds the tile state) or some activation is not finite.
bool quant_amx_supported();
bool quant_matmul_amx(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const QuantView& w, float* y,
                      int64_t ldy);

// The ways a decode-sized quantized matmul can run: every one computes the same products.
enum class QuantGemvPath { generic, avx2, avx2_int, avx512, vnni, neon, avx_vnni, neon_dotprod };
const char* quant_gemv_path_name(QuantGemvPath path);
// The paths this build and CPU run, fastest last.
std::vector<QuantGemvPath> quant_gemv_paths();
// The path of a kernel table's instruction set: generic for the generic table, avx2-int (avx-vnni
// where the CPU has AVX-VNNI) for the AVX2 one, the fastest of all for AVX-512 (a CPU with
// AVX-512 also runs the AVX2 paths, and its AVX2 kernels outrun the AVX-512 f32 one) and NEON
// (neon-dotprod where the CPU has SDOT).
QuantGemvPath quant_gemv_path_for(const Kernels& kernels);
// y[m * ldy + n] = sum_k x[m * ldx + k] W[n, k] for M <= kQuantGemvMaxRows by `path` (one of
// quant_gemv_paths()); vnni falls back to avx512 for activations it cannot split, avx2_int and
// avx_vnni to avx2 for those and for 8-bit codes, neon_dotprod to neon likewise.
void quant_gemv(QuantGemvPath path, ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const QuantView& w,
                float* y, int64_t ldy);

// dequantize_rows or its fastest twin, to go with a kernel table as quant_gemv_path_for does.
QuantDequantizeFn quant_dequantize_for(const Kernels& kernels);

// y[m * ldy + n] = bias[n] (if any) + sum_k x[m * ldx + k] W[n, k]; threads over output rows.
void quant_matmul(const Kernels& kernels, ThreadPool* pool, int64_t M, const float* x, int64_t ldx,
                  const QuantView& w, const float* bias, float* y, int64_t ldy);

}  // namespace moxin::cpu
