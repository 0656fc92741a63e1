// Run-time choices among the SIMD kernels' template instances, shared by the AVX-512 and AVX2
// files: the weight loader for a dtype, and a register count from a column count. The callees
// take no vector arguments, so they may be compiled for another ISA than the caller (target
// pragmas) and are simply called.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "backend/cpu/cpu_kernels.hpp"
#include "core/check.hpp"
#include "core/dtype.hpp"

namespace moxin::cpu {

// f(Loader{}) with the ISA's loader for weights of `dtype` (BF16, F16 or F32; any other is an
// error naming it).
template <class Bf16, class F16, class F32, class F>
void with_weight_loader(DType dtype, F&& f) {
  switch (dtype) {
    case DType::BF16: return f(Bf16{});
    case DType::F16: return f(F16{});
    case DType::F32: return f(F32{});
    default: fail("[cpu] matmul: weights of dtype ", dtype_name(dtype), " are not supported");
  }
}

// Op<nv>::run(args...) for 1 <= nv <= Max (how many vectors of a row the kernel holds in
// registers); a larger nv runs Op<Max>.
template <template <int> class Op, int Max, class... Args>
void run_with_vectors(int nv, Args&&... args) {
  if constexpr (Max > 1) {
    if (nv < Max) return run_with_vectors<Op, Max - 1>(nv, std::forward<Args>(args)...);
  }
  Op<Max>::run(std::forward<Args>(args)...);
}

// The GEMV of every SIMD table: weight rows n0 .. n1 in blocks of ~256 KB, each passed over by
// every group of up to 4 activation rows while it is still in L2, so the weights come from
// memory once however many groups there are. rows_fn(std::integral_constant<int, MG>{}, loader,
// block, ld, count, K, x, ldx, bias, y, ldy) multiplies `count` weight rows by MG activation
// rows (1 <= MG <= 4), reading the weights with the ISA's loader for their dtype.
template <class Bf16, class F16, class F32, class RowsFn>
void gemv_in_l2_blocks(const WeightView& w, int64_t n0, int64_t n1, const float* x, int64_t ldx, int64_t M,
                       const float* bias, float* y, int64_t ldy, RowsFn rows_fn) {
  with_weight_loader<Bf16, F16, F32>(w.dtype, [&](auto loader) {
    using T = typename decltype(loader)::T;
    const auto* base = static_cast<const T*>(w.data);
    const int64_t block =
        std::max<int64_t>(8, (int64_t{256} << 10) / (w.cols * static_cast<int64_t>(sizeof(T))) / 8 * 8);
    for (int64_t b0 = n0; b0 < n1; b0 += block) {
      const T* rows = base + b0 * w.ld;
      const int64_t count = std::min(block, n1 - b0);
      const float* b = bias ? bias + b0 : nullptr;
      for (int64_t m0 = 0; m0 < M; m0 += 4) {
        const float* xm = x + m0 * ldx;
        float* ym = y + m0 * ldy + b0;
        switch (std::min<int64_t>(4, M - m0)) {
          case 1: rows_fn(std::integral_constant<int, 1>{}, loader, rows, w.ld, count, w.cols, xm, ldx, b, ym, ldy); break;
          case 2: rows_fn(std::integral_constant<int, 2>{}, loader, rows, w.ld, count, w.cols, xm, ldx, b, ym, ldy); break;
          case 3: rows_fn(std::integral_constant<int, 3>{}, loader, rows, w.ld, count, w.cols, xm, ldx, b, ym, ldy); break;
          default: rows_fn(std::integral_constant<int, 4>{}, loader, rows, w.ld, count, w.cols, xm, ldx, b, ym, ldy); break;
        }
      }
    }
  });
}

}  // namespace moxin::cpu
