// The AVX2 integer 4-bit GEMV (cpu_quant_avx2_int_kernel.hpp) on CPUs with AVX-VNNI, the 256-bit
// VEX encoding of the VNNI dot products that Intel's client cores since Alder Lake and its
// E-core Xeons have without AVX-512. Each accumulation's multiply-adds become one instruction:
// vpdpwssd for the four 16-bit products (vpmaddwd + vpaddd before), two vpdpbusd for the 8-bit
// part (two vpmaddubsw, an i16 add, a vpmaddwd and a vpaddd before): per 64 codes and row 6
// dot-product instructions instead of 7 multiplies and 6 adds. The integer sums are the same, so
// the results are the AVX2 path's bit for bit. Measured on the one AVX-VNNI machine at hand, a
// 2-core Xeon VM that also has AVX-512 VNNI (BM_QuantGemvPath, 4-bit g64 [14336 x 4096]): one core
// from L2 12.2 -> 13.0 GB/s, two threads from memory 19.5-20.0 -> 19.9-20.6 GB/s (within the VM's
// noise); three weight rows per tile instead of two, with the registers this frees, no better.
#include "backend/cpu/cpu_quant_kernels.hpp"
#include "backend/cpu/cpu_features.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MOXIN_HAVE_AVX_VNNI_QUANT 1
#define MOXIN_AVX2_INT_WITH_AVX_VNNI 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avxvnni"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avxvnni")
// GCC 12's intrinsics trip -Wmaybe-uninitialized on their own undefined vectors (bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "backend/cpu/cpu_quant_avx2_int_kernel.hpp"  // (after the pragmas: compiled for this file's target)
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
#endif  // MOXIN_HAVE_AVX_VNNI_QUANT

namespace moxin::cpu {

bool quant_avx_vnni_supported() {
#if defined(MOXIN_HAVE_AVX_VNNI_QUANT)
  static const bool supported = cpu_has_avx2_fma_f16c() && cpu_has_avx_vnni();
  return supported;
#else
  return false;
#endif
}

bool quant_gemv_avx_vnni(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const QuantView& w, float* y,
                         int64_t ldy) {
#if defined(MOXIN_HAVE_AVX_VNNI_QUANT)
  return quant_avx_vnni_supported() && w.bits == 4 && run_avx2_int_gemv(pool, M, x, ldx, w, y, ldy);
#else
  (void)pool, (void)M, (void)x, (void)ldx, (void)w, (void)y, (void)ldy;
  return false;
#endif
}

}  // namespace moxin::cpu
