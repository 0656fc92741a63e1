// AVX2 integer GEMV for 4-bit codes, for x86 CPUs without AVX-512 VNNI (the kernel and its
// layout: cpu_quant_avx2_int_kernel.hpp).
#include "backend/cpu/cpu_quant_kernels.hpp"
#include "backend/cpu/cpu_features.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MOXIN_HAVE_AVX2_INT_QUANT 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
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
#endif  // MOXIN_HAVE_AVX2_INT_QUANT

namespace moxin::cpu {

bool quant_avx2_int_supported() {
#if defined(MOXIN_HAVE_AVX2_INT_QUANT)
  return cpu_has_avx2_fma_f16c();
#else
  return false;
#endif
}

bool quant_gemv_avx2_int(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const QuantView& w, float* y,
                         int64_t ldy) {
#if defined(MOXIN_HAVE_AVX2_INT_QUANT)
  return quant_avx2_int_supported() && w.bits == 4 && run_avx2_int_gemv(pool, M, x, ldx, w, y, ldy);
#else
  (void)pool, (void)M, (void)x, (void)ldx, (void)w, (void)y, (void)ldy;
  return false;
#endif
}

}  // namespace moxin::cpu
