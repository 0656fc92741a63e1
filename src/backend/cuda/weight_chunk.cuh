// One warp's share of a 64-input chunk of 16 bf16 weight rows, loaded straight from global memory
// into mma.sync m16n8k16 A fragments (the skinny and streaming decode GEMMs).
//
// The sum over k does not care in which order k comes, so a quad of lanes (t = lane % 4) owning
// weight rows g and g + 8 (g = lane / 4) takes 16 inputs each as two 16-byte vectors: lane t's
// first vector holds inputs 8 t .. 8 t + 7 of the chunk, its second 32 + 8 t .. 32 + 8 t + 7. Each
// load instruction thus reads whole 32-byte sectors (a quad: 64 contiguous bytes of a row); with
// 32 contiguous bytes per lane instead, both loads touched every sector of the line and the
// weights crossed from L2 twice (loads skip L1), which held these kernels at ~60-75% of copy.
// mma step s (0..3) uses the lane's inputs 4 s .. 4 s + 3 (in the order above: chunk inputs
// step_input(t, s) .. + 3) as the fragment's k slots {2t, 2t+1, 2t+8, 2t+9}; a B fragment must
// hold the same four inputs of its token: slots {2t, 2t+1} the first two, {2t+8, 2t+9} the others.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/streaming_load.cuh"

namespace moxin::cuda {

constexpr int kWeightChunk = 64;  // inputs per K chunk: 4 lanes x 16
constexpr int kVectorInputs = 8;  // bf16 weights per 16-byte load
constexpr int kSecondVector = 32;  // the lane's second vector, inputs after its first

// The lane's first input of the chunk (its rows' pointers start there).
__host__ __device__ constexpr int lane_input(int t) { return kVectorInputs * t; }
// The first of the four chunk inputs that mma step s multiplies in lane t.
__host__ __device__ constexpr int step_input(int t, int s) {
  return lane_input(t) + 4 * (s % 2) + kSecondVector * (s / 2);
}

// For each of the R row tiles, rows g and g + 8, inputs 16 t .. 16 t + 15 as two 16-byte vectors.
template <int R>
struct ChunkWeights {
  uint4 w[R][2][2];  // [tile][row g / g + 8][vector]

  // rows: the lane's two rows of each tile, already offset by lane_input(t); k0: the chunk's
  // first input; k: the inputs left from the lane's first (zeros past it; K % 8 == 0).
  __device__ void load(const uint16_t* const (&rows)[R][2], int k0, int k) {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int v = 0; v < 2; ++v) {
          const int at = k0 + kSecondVector * v;
          w[r][h][v] = at < k ? load_once_16(rows[r][h] + at) : make_uint4(0, 0, 0, 0);
        }
  }

  // A fragment of tile r for mma step s: the lane's inputs 4 s .. 4 s + 3 (of vector s / 2).
  __device__ void fragment(int r, int s, uint32_t (&a)[4]) const {
    const uint4& lo = w[r][0][s / 2];
    const uint4& hi = w[r][1][s / 2];
    a[0] = s % 2 ? lo.z : lo.x;
    a[1] = s % 2 ? hi.z : hi.x;
    a[2] = s % 2 ? lo.w : lo.y;
    a[3] = s % 2 ? hi.w : hi.y;
  }
};

}  // namespace moxin::cuda
