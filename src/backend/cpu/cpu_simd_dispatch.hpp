// Run-time choices among the SIMD kernels' template instances, shared by the AVX-512 and AVX2
// files: the weight loader for a dtype, and a register count from a column count. The callees
// take no vector arguments, so they may be compiled for another ISA than the caller (target
// pragmas) and are simply called.
#pragma once

#include <utility>

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

}  // namespace moxin::cpu
