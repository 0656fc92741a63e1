// The split-activation layout shared by the integer quantized GEMVs (AVX-512 VNNI and AVX2):
// each group of activations becomes a 24-bit fixed-point value, stored exactly as three signed
// bytes per input,
//
//   x ~= 2^e (h + l / 256 + t / 65536),  max |x| <= 127 * 2^e,
//
// so a weight row's codes (unsigned bytes or nibbles) meet the activations in integer
// multiply-adds, and per group dot = 2^(e - 16) (65536 D_h + 256 D_l + D_t) is exact before
// one conversion to f32. Each ISA writes the parts with its own splitter; this file owns the
// exponent rule, the VNNI kernel's byte layout (StepLayout), the per-call buffers and the
// driver. The AVX2 kernel keeps the same 24 bits per input as a 16-bit and an 8-bit part, in
// its own order inside the same part_bytes (cpu_quant_avx2_int.cpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "core/thread_pool.hpp"
#include "quant/affine_quant.hpp"

namespace moxin::cpu {

// What the VNNI kernel consumes per step of one weight row: `vectors` 64-byte code operands
// (4-bit: the low and the high nibbles of 64 bytes; 8-bit: 64 or 128 bytes) covering `inputs`
// inputs: one group of 128, two of 64 or four of 32 at 4 bits; at 8 bits one group of 64 or
// 128, or two of 32. The split activations of a step are
// three parts (h, l, t) of `vectors` 64-byte operands each, in the codes' order: for 4-bit
// codes, byte b of a part's first operand is input 2b of the step (a low nibble), byte b of
// its second operand input 2b + 1 (a high nibble); for 8-bit codes, inputs in order.
struct StepLayout {
  int64_t inputs;
  int vectors;
};

inline StepLayout split_step_layout(const QuantView& w) {
  if (w.bits == 8) {
    const int64_t inputs = std::max<int64_t>(w.group_size, 64);
    return {inputs, static_cast<int>(inputs / 64)};
  }
  return {128, 2};
}

// Per-call constants shared by the splitters and the kernels.
struct GemvShape {
  StepLayout step;
  int64_t steps;          // per row, the last one possibly part full (a step of several groups)
  int64_t full_steps;     // steps whose codes are all inside the row
  int64_t groups;         // per row
  int64_t group_stride;   // floats per activation row in pow2/sums: groups rounded up, plus a
                          // vector of zeros, so kernels may read 16 past any group
  int64_t step_bytes;     // split activation bytes per step: 3 parts of `vectors` operands
  int64_t part_gap;       // bytes from one part of a step to the next
  int64_t part_bytes;     // split activation bytes per activation row (3 per input, padded)

  explicit GemvShape(const QuantView& w)
      : step(split_step_layout(w)),
        steps((w.cols + step.inputs - 1) / step.inputs),
        full_steps(w.cols / step.inputs),
        groups(w.groups_per_row()),
        group_stride((groups + 15) / 16 * 16 + 16),
        step_bytes(3 * step.vectors * 64),
        part_gap(step.vectors * 64),
        part_bytes(steps * step_bytes) {}
};

// The e of a group whose largest magnitude is amax: max / 127 < 2^e (frexp), so |h| <= 127;
// kept where 2^(e - 16) and 2^(16 - e) are normal floats (groups below 2^-110 round to zero).
inline int split_exponent(float amax) {
  int e = 0;
  std::frexp(amax / 127.0f, &e);
  return std::clamp(e, -110, 127);
}

// The split activation rows of one call: parts 64-byte aligned (every VNNI operand load is one
// cache line); pow2[m * group_stride + g] = 2^(e - 16) and sums[...] = the f32 sum of group g.
struct SplitActivations {
  std::vector<int8_t> storage;
  int8_t* parts;
  std::vector<float> pow2, sums;

  SplitActivations(const GemvShape& s, int64_t M)
      : storage(static_cast<size_t>(M * s.part_bytes + 64)),
        parts(storage.data() + (64 - reinterpret_cast<uintptr_t>(storage.data()) % 64) % 64),
        pow2(static_cast<size_t>(M * s.group_stride), 0.0f),
        sums(pow2.size(), 0.0f) {}
};

// Rows [n0, n1) in blocks small enough to stay in L2 while pairs of activation rows pass over
// them, so the codes come from memory once whatever M is: tile(R, MM, n, m) for R = kTileRows
// or 1 weight rows from n against MM = 2 or 1 activation rows from m, R and MM as
// std::integral_constant so that the kernel can take them as template arguments.
template <int kTileRows, class Tile>
void for_each_tile(int64_t n0, int64_t n1, int64_t M, int64_t row_bytes, Tile&& tile) {
  using Pair = std::integral_constant<int, 2>;
  using Single = std::integral_constant<int, 1>;
  using Rows = std::integral_constant<int, kTileRows>;
  const int64_t block = std::max<int64_t>(kTileRows, (int64_t{128} << 10) / row_bytes / kTileRows * kTileRows);
  for (int64_t b0 = n0; b0 < n1; b0 += block) {
    const int64_t b1 = std::min(n1, b0 + block);
    for (int64_t m = 0; m < M; m += 2) {
      int64_t n = b0;
      if (M - m >= 2) {
        for (; n + kTileRows <= b1; n += kTileRows) tile(Rows{}, Pair{}, n, m);
        for (; n < b1; ++n) tile(Single{}, Pair{}, n, m);
      } else {
        for (; n + kTileRows <= b1; n += kTileRows) tile(Rows{}, Single{}, n, m);
        for (; n < b1; ++n) tile(Single{}, Single{}, n, m);
      }
    }
  }
}

// Splits the M activation rows with split_row(x_row, parts, pow2, sums) -> bool (false when some
// x is not finite: the split cannot carry it), then runs rows(t0, t1) over tiles of `tile_rows`
// weight rows, on the pool's threads where there is one. False, with nothing written, when a
// row did not split.
template <class SplitRow, class Rows>
bool run_split_gemv(ThreadPool* pool, int64_t M, const float* x, int64_t ldx, const QuantView& w,
                    const GemvShape& s, SplitActivations& split, int64_t tile_rows, SplitRow&& split_row,
                    Rows&& rows) {
  for (int64_t m = 0; m < M; ++m)
    if (!split_row(x + m * ldx, split.parts + m * s.part_bytes, split.pow2.data() + m * s.group_stride,
                   split.sums.data() + m * s.group_stride))
      return false;
  const int64_t tiles = (w.rows + tile_rows - 1) / tile_rows;
  if (pool)
    pool->parallel_for(tiles, rows, 4);
  else
    rows(0, tiles);
  return true;
}

}  // namespace moxin::cpu
