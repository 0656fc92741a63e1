// Picks a kernel templated on a register count (how many vectors of a row it holds in
// registers) from a count known only at run time, as a switch over 1 ... Max would.
#pragma once

#include <utility>

namespace moxin::cpu {

// Op<nv>::run(args...) for 1 <= nv <= Max; a larger nv runs Op<Max>. Op::run takes no vector
// arguments, so it may be compiled for another ISA than the caller (target pragmas).
template <template <int> class Op, int Max, class... Args>
void run_with_vectors(int nv, Args&&... args) {
  if constexpr (Max > 1) {
    if (nv < Max) return run_with_vectors<Op, Max - 1>(nv, std::forward<Args>(args)...);
  }
  Op<Max>::run(std::forward<Args>(args)...);
}

}  // namespace moxin::cpu
