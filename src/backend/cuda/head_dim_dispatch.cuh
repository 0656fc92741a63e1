// Head dims reach the attention kernels as a compile-time count of 16-wide chunks
// (ceil(head_dim / 16), 1..8 for head_dim <= 128), so their per-thread arrays stay in registers.
#pragma once

#include <utility>

namespace moxin::cuda {

constexpr int kMaxHeadDimChunks = 8;

// Calls f.template operator()<C>() with C = ceil(head_dim / 16); nothing for head dims past 128
// (the backend rejects those before launching).
template <class F>
void dispatch_head_dim_chunks(int head_dim, F&& f) {
  const int chunks = (head_dim + 15) / 16;
  [&]<int... I>(std::integer_sequence<int, I...>) {
    ((chunks == I + 1 ? (f.template operator()<I + 1>(), 0) : 0), ...);
  }(std::make_integer_sequence<int, kMaxHeadDimChunks>{});
}

// Calls f.template operator()<C>() for every C that dispatch_head_dim_chunks can pick.
template <class F>
void for_all_head_dim_chunks(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    (f.template operator()<I + 1>(), ...);
  }(std::make_integer_sequence<int, kMaxHeadDimChunks>{});
}

}  // namespace moxin::cuda
