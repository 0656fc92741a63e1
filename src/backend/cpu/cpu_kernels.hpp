// The leaf kernels of the CPU backend behind one table of function pointers, so the ops are
// written once and the instruction set is picked at runtime: AVX-512 where the CPU has it,
// else AVX2 + FMA + F16C, NEON on ARM64, else portable C++ (auto-vectorized for the baseline ISA).
#pragma once

#include <cstdint>
#include <vector>

#include "core/dtype.hpp"

namespace moxin {
class ThreadPool;
}

namespace moxin::cpu {

// A weight matrix [rows, cols] (out x in features) where it lies, usually in the mmap'd
// checkpoint: what the matmul kernels read. Dense BF16, F16 or F32 today; a quantized format
// adds its codes/scales here and a case to each kernel that reads weights.
struct WeightView {
  DType dtype = DType::F32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t ld = 0;  // elements from one row to the next
};

struct Kernels {
  const char* name;

  // Register tile of gemm_tile: gemm_mr activation rows x gemm_nr weight rows, the width of
  // the panels pack_panels writes (a power of two, at most 32).
  int gemm_mr;
  int gemm_nr;

  // Up to this many activation rows the GEMV (tiles of dot products over weight rows kept in
  // L2) is faster than the GEMM, whose weight packing dominates at small M; beyond, the
  // blocked GEMM wins. Measured per ISA (bench/cpu_ops_bench.cpp BM_Gemm, M = 32 ... 129).
  int64_t gemv_max_rows;

  // y[m * ldy + n] = bias[n] + sum_k x[m * ldx + k] * W[n, k]  for m < M, n0 <= n < n1.
  // Reads each weight row from memory once however large M is (a block of rows is revisited
  // from L2 for every 4 activation rows) and needs no packing: for small and moderate M.
  // bias may be null.
  void (*gemv)(const WeightView& w, int64_t n0, int64_t n1, const float* x, int64_t ldx,
               int64_t M, const float* bias, float* y, int64_t ldy);

  // Converts W[n0 : n0 + nc, k0 : k0 + kc] to f32 panels of NR = gemm_nr rows: panel p holds
  // kc x NR floats, k-major (panel[k * NR + j] = W[n0 + p * NR + j, k0 + k]). Rows past nc
  // are zero-filled.
  void (*pack_panels)(const WeightView& w, int64_t n0, int64_t nc, int64_t k0, int64_t kc,
                      float* panels);

  // c[i * ldc + j] (+)= sum_k a[i * lda + k] * panel[k * NR + j] for i < mr <= gemm_mr,
  // j < nr <= NR = gemm_nr. accumulate == false: c = bias[j] (or 0) + product.
  void (*gemm_tile)(int64_t kc, const float* a, int64_t lda, int mr, const float* panel, int nr,
                    float* c, int64_t ldc, const float* bias, bool accumulate);

  // Attention of the G query heads that share one kv head (q: G rows of D, one after the
  // other) over n cached rows: key i is keys[rows[i] .. + D], value i values[rows[i] .. + D].
  // y (G rows of D) = softmax(scale * q . k_i) weighted sum of v_i, in f32. Each K and V row
  // is read once for the whole group. scores is scratch for G * n floats.
  void (*attend)(const float* q, int64_t G, const float* keys, const float* values,
                 const int64_t* rows, int64_t n, int64_t D, float scale, float* scores, float* y);

  // x = softmax(scale * x) over n values, in place (max subtracted first).
  void (*softmax)(float* x, int64_t n, float scale);

  // x = 0.5 x (1 + erf(x / sqrt 2)), in place, within 4e-7 relative per element.
  void (*gelu_erf)(float* x, int64_t n);

  // y = silu(gate) * up = gate / (1 + exp(-gate)) * up; y may alias gate or up.
  void (*silu_mul)(const float* gate, const float* up, float* y, int64_t n);

  // MistralRMSNorm of one row of n: y = w * (x * scale), scale = 1 / sqrt(mean(x^2) + eps)
  // with the sum of squares taken in double (no f32 rounding grows with n), each product
  // rounded to f32 as PyTorch does. y may alias x.
  void (*rms_norm)(const float* x, const float* w, float eps, int64_t n, float* y);

  // x += residual, then y = rms_norm(x) as above (one pass over the row's memory less).
  void (*add_rms_norm)(float* x, const float* residual, const float* w, float eps, int64_t n, float* y);

  // LayerNorm of one row of n: y = (x - mean) / sqrt(var + eps) * w + b, mean and variance
  // (two passes) and the output formula in double, rounded to f32 once. y may alias x.
  void (*layer_norm)(const float* x, const float* w, const float* b, float eps, int64_t n, float* y);

  // RoPE of one head of 2 * half values (transformers' rotate_half layout):
  // out[i] = x[i] cos[i] - x[i + half] sin[i], out[i + half] = x[i + half] cos[i] + x[i] sin[i],
  // each product rounded to f32 before the sum (no FMA), as PyTorch computes it.
  void (*rope)(const float* x, const float* cos, const float* sin, int64_t half, float* out);

  // Reads `bytes` (a multiple of 64) as fast as this ISA allows and returns a checksum: the
  // read-bandwidth ceiling that benchmarks compare the GEMV against.
  uint64_t (*read_stream)(const uint8_t* data, int64_t bytes);

  // out[i] = E4M3 value of codes[i] * scale (the FP8 KV cache's rows, src/core/fp8_kv.hpp):
  // the same bits as moxin::widen_e4m3. Codes are never NaN (0x7F, 0xFF).
  void (*widen_e4m3)(const uint8_t* codes, int64_t n, float scale, float* out);
  // The linear of bf16 weights on bf16 hardware, or null: at every row count (the GEMV and
  // gemv_max_rows then serve only other weight dtypes), writing the leading columns of y it
  // returns (cpu_matmul_amx.hpp, cpu_matmul_avx512bf16.hpp), the f32 GEMM the rest. It rounds
  // the activations to bf16, so only a table named for it ("amx", "avx512bf16") has one.
  int64_t (*bf16_tile_matmul)(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const WeightView& w,
                              const float* bias, float* y, int64_t ldy);
};

const Kernels& generic_kernels();
// nullptr when this build or this CPU lacks AVX-512 F, BW and VL (or FMA).
const Kernels* avx512_kernels();
// nullptr when this build or this CPU lacks AVX2, FMA or F16C.
const Kernels* avx2_kernels();
// nullptr unless this is an ARM64 Linux build on a CPU with Advanced SIMD (NEON).
const Kernels* neon_kernels();
// The AVX-512 table with the prefill/vision GEMM on AMX bf16 tiles; nullptr without them.
const Kernels* amx_kernels();
// The AVX-512 table with every bf16 linear on AVX-512 BF16 dot products; nullptr without them.
const Kernels* avx512bf16_kernels();
// Every table this build and CPU can run, portable first, fastest last.
std::vector<const Kernels*> supported_kernels();
// The fastest table this CPU runs (amx where it has the tiles: bf16 weights then multiply
// bf16-rounded activations, as in PyTorch's bf16 model); MOXIN_CPU_KERNELS=generic, avx2, avx512,
// avx512bf16, amx or neon forces one (an error if this CPU cannot run it; avx512 keeps the
// activations in f32, avx512bf16 rounds them as amx does).
const Kernels& best_kernels();

}  // namespace moxin::cpu
