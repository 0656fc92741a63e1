// FP8 E4M3 weights with per-output-row scales (docs/model.md section 5): the decode GEMV that
// reads the codes directly, the exact widening of the codes to bf16 for the cuBLASLt prefill
// path, the per-token quantization of activations for the FP8 tensor-core path, and the
// row/column scaling that follows either GEMM.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "backend/cuda/attention_mma.cuh"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/e4m3.cuh"
#include "backend/cuda/e4m3_rows.cuh"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/streaming_load.cuh"
#include "backend/cuda/warp_reduce.cuh"

namespace moxin::cuda {
namespace {

constexpr int kGemvWarps = 8;  // warps per block

// Applies one 16-code vector of each of the R rows (index `chunk` along K) to all M activation
// rows: the codes widened exactly (cvt.rn.f16x2.e4m3x2), then f32 FMAs in K order.
template <int M, int R>
__device__ __forceinline__ void accumulate_chunk(const uint4 (&raw)[R], const float* __restrict__ x, int k,
                                                 int chunk, float (&acc)[M][R]) {
  float wv[R][16];
#pragma unroll
  for (int r = 0; r < R; ++r) e4m3x16_to_float(raw[r], wv[r]);
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const float4* xr = reinterpret_cast<const float4*>(x + int64_t{m} * k) + 4 * chunk;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float4 xv = __ldg(xr + q);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        acc[m][r] = fmaf(wv[r][4 * q], xv.x, acc[m][r]);
        acc[m][r] = fmaf(wv[r][4 * q + 1], xv.y, acc[m][r]);
        acc[m][r] = fmaf(wv[r][4 * q + 2], xv.z, acc[m][r]);
        acc[m][r] = fmaf(wv[r][4 * q + 3], xv.w, acc[m][r]);
      }
    }
  }
}

// The row sums of a warp, scaled by each row's scale (lane 0 stores them).
template <int M, int R>
__device__ __forceinline__ void store_rows(float (&acc)[M][R], const Fp8Matrix& w, int row0, int rows,
                                           float* __restrict__ y) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float sum = warp_sum(acc[m][r]);
      if (lane == 0 && r < rows) y[int64_t{m} * w.rows + row0 + r] = sum * w.scales[row0 + r];
    }
}

// One warp per R weight rows and one of S slices of K: each activation a lane loads (from
// L1/L2) serves R rows, so the activation traffic per weight byte is 4 M / R bytes instead of
// 4 M; the S warps of the same rows (neighbours in the block) add their partial sums in slice
// order through shared memory, so matrices with few rows still put enough warps on every SM.
// Each lane takes 16 codes of each row per step (16-byte loads) and issues the loads of U steps
// before using any. A row's f32 sum runs in the same order for every M and U (the order depends
// on S, which the launcher picks from the matrix's shape only). Needs K % 16 == 0 and 16-byte
// aligned x (the launcher checks).
template <int M, int R, int U, int S>
__global__ void __launch_bounds__(kGemvWarps * 32)
    fp8_gemv_vec_kernel(const float* __restrict__ x, Fp8Matrix w, float* __restrict__ y) {
  static_assert(kGemvWarps % S == 0, "the K slices of a row group share a block");
  __shared__ float partial[S > 1 ? kGemvWarps : 1][M][R];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int slice = warp % S;
  const int row0 = (blockIdx.x * (kGemvWarps / S) + warp / S) * R;
  const int rows = max(0, min(R, w.rows - row0));  // warp-uniform; 0: a whole warp past the end
  const int k = w.cols;
  const int chunks = k / 16;
  const int first = chunks * slice / S, end = chunks * (slice + 1) / S;
  // Rows past the matrix's end re-read its last row (their sums are never stored), so every
  // load stays in bounds and the loops need no branch.
  const uint4* codes[R];
#pragma unroll
  for (int r = 0; r < R; ++r)
    codes[r] = reinterpret_cast<const uint4*>(w.codes + int64_t{min(row0 + r, w.rows - 1)} * k);
  // The codes never depend on earlier kernels: the first steps' lines head for L2 while the
  // kernel that writes x drains (programmatic dependent launch).
#pragma unroll
  for (int u = 0; u < U; ++u)
#pragma unroll
    for (int r = 0; r < R; ++r)
      if (first + lane + u * 32 < end) asm volatile("prefetch.global.L2 [%0];" ::"l"(codes[r] + first + lane + u * 32));
  wait_for_prior_kernels();
  float acc[M][R];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;
  int c = first + lane;
  for (; c + (U - 1) * 32 < end; c += U * 32) {
    uint4 raw[U][R];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < R; ++r) raw[u][r] = load_once_16(codes[r] + c + u * 32);
#pragma unroll
    for (int u = 0; u < U; ++u) accumulate_chunk<M, R>(raw[u], x, k, c + u * 32, acc);
  }
  for (; c < end; c += 32) {
    uint4 raw[R];
#pragma unroll
    for (int r = 0; r < R; ++r) raw[r] = load_once_16(codes[r] + c);
    accumulate_chunk<M, R>(raw, x, k, c, acc);
  }
  allow_dependents();
  if constexpr (S == 1) {
    store_rows<M, R>(acc, w, row0, rows, y);
  } else {
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float sum = warp_sum(acc[m][r]);
        if (lane == 0) partial[warp][m][r] = sum;
      }
    __syncthreads();
    if (slice == 0 && lane == 0) {
#pragma unroll
      for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if (r >= rows) break;
          float sum = partial[warp][m][r];
#pragma unroll
          for (int s = 1; s < S; ++s) sum += partial[warp + s][m][r];
          y[int64_t{m} * w.rows + row0 + r] = sum * w.scales[row0 + r];
        }
    }
  }
}

// Any K and alignment (tiny test models): one code per lane per step.
template <int M, int R>
__global__ void __launch_bounds__(kGemvWarps * 32)
    fp8_gemv_scalar_kernel(const float* __restrict__ x, Fp8Matrix w, float* __restrict__ y) {
  wait_for_prior_kernels();
  const int lane = threadIdx.x % 32;
  const int row0 = (blockIdx.x * kGemvWarps + threadIdx.x / 32) * R;
  if (row0 >= w.rows) return;
  const int rows = min(R, w.rows - row0);
  const int k = w.cols;
  const uint8_t* codes[R];
#pragma unroll
  for (int r = 0; r < R; ++r) codes[r] = w.codes + int64_t{row0 + min(r, rows - 1)} * k;
  float acc[M][R];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;
  for (int c = lane; c < k; c += 32) {
    float wv[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wv[r] = e4m3_to_float(codes[r][c]);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const float xv = __ldg(x + int64_t{m} * k + c);
#pragma unroll
      for (int r = 0; r < R; ++r) acc[m][r] = fmaf(wv[r], xv, acc[m][r]);
    }
  }
  store_rows<M, R>(acc, w, row0, rows, y);
}

bool vectorizable(const float* x, const Fp8Matrix& w) {
  return w.cols % 16 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
}

template <int M, int R, int U, int S>
void launch_vec(const float* x, const Fp8Matrix& w, float* y, cudaStream_t stream) {
  const int rows_per_block = kGemvWarps / S * R;
  const unsigned blocks = static_cast<unsigned>((w.rows + rows_per_block - 1) / rows_per_block);
  launch_kernel("fp8_gemv_vec_kernel", fp8_gemv_vec_kernel<M, R, U, S>, blocks, kGemvWarps * 32, 0, stream, x,
                w, y);
}

// Tilings from the session-7 sweeps (H200, docs/cuda-notes.md), 2 steps in flight per lane:
// more rows per warp share each x load from L1 (64 M / (16 R) bytes per code byte), and long
// rows split K so that few rows still make >= 2 blocks per SM. M <= 2: [4096 x 14336] 86% of
// copy with 4 rows and 4 slices (51% with 1), [14336 x 4096] 79% and [32064 x 4096] 90% with 8
// rows and 1 slice. M > 2 holds 4 rows (8 would spill its M x 8 sums).
constexpr int kSteps = 2;
constexpr int kLongRows = 8192;  // inputs from which K is split in 4
constexpr int kManyRows = 8192;  // rows from which one slice makes enough blocks

template <int M>
void launch_gemv(const float* x, const Fp8Matrix& w, float* y, cudaStream_t stream) {
  if (!vectorizable(x, w)) {
    constexpr int kRows = 4;
    const unsigned blocks = static_cast<unsigned>((w.rows + kGemvWarps * kRows - 1) / (kGemvWarps * kRows));
    launch_kernel("fp8_gemv_scalar_kernel", fp8_gemv_scalar_kernel<M, kRows>, blocks, kGemvWarps * 32, 0, stream,
                  x, w, y);
  } else if (w.cols >= kLongRows) {
    launch_vec<M, 4, kSteps, 4>(x, w, y, stream);
  } else if (w.rows < kManyRows) {
    launch_vec<M, 4, kSteps, 2>(x, w, y, stream);
  } else if constexpr (M <= 2) {
    launch_vec<M, 8, kSteps, 1>(x, w, y, stream);
  } else {
    launch_vec<M, 4, kSteps, 1>(x, w, y, stream);
  }
}

// Codes widened to bf16 (exact: every E4M3 value is a bf16 value), 16 codes a thread: one 16-byte
// load and two 16-byte stores (a code a thread read bytes and made the fp8 prefill's widening
// the slowest of the quantized formats' dequantizations: 1024 tokens 50.1 ms against int4's 34.5,
// H100 session 27). Counts that are not whole 16s, or unaligned pointers: a code a thread.
__global__ void fp8_codes_to_bf16_kernel(const uint8_t* __restrict__ codes, int64_t count,
                                         __nv_bfloat16* __restrict__ out, bool vectors) {
  wait_for_prior_kernels();
  const int64_t first = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  if (!vectors) {
    for (int64_t i = first; i < count; i += stride) out[i] = __float2bfloat16(e4m3_to_float(codes[i]));
    return;
  }
  for (int64_t i = first; i < count / 16; i += stride) {
    const uint4 raw = load_once_16(reinterpret_cast<const uint32_t*>(codes) + 4 * i);
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
    uint32_t pairs[8];
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const float2 lo = e4m3x2_to_float2(words[w] & 0xFFFFu), hi = e4m3x2_to_float2(words[w] >> 16);
      pairs[2 * w] = pack_bf16(lo.x, lo.y);
      pairs[2 * w + 1] = pack_bf16(hi.x, hi.y);
    }
    uint4* dest = reinterpret_cast<uint4*>(out) + 2 * i;
    dest[0] = make_uint4(pairs[0], pairs[1], pairs[2], pairs[3]);
    dest[1] = make_uint4(pairs[4], pairs[5], pairs[6], pairs[7]);
  }
}

__global__ void scale_rows_columns_kernel(float* __restrict__ y, const float* __restrict__ row_scales,
                                          const float* __restrict__ col_scales, int64_t rows, int64_t cols) {
  wait_for_prior_kernels();
  const int64_t count = rows * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x)
    y[i] *= row_scales ? row_scales[i / cols] * col_scales[i % cols] : col_scales[i % cols];
}

constexpr int kQuantizeThreads = 256;

// One block per row: quantize_rows_e4m3 by e4m3_rows.cuh's writer (which rounds each value to
// bf16), so the ops that write such rows directly give the same codes. Rows of k % 4 == 0 values
// in aligned groups of four hold up to Vecs groups a thread in registers between the amax and
// the codes (the wide rows of down's input, 14336 values, were read twice: ~1/3 of the pass).
template <int Vecs, class In>
__global__ void __launch_bounds__(kQuantizeThreads)
    quantize_rows_e4m3_held_kernel(const In* __restrict__ x, int vecs, E4M3Rows out) {
  wait_for_prior_kernels();
  const In* xr = x + int64_t{blockIdx.x} * vecs * 4;
  write_e4m3_row4<Vecs>(out, blockIdx.x, vecs, [&](int c) { return load4_activations(xr, 4 * c); });
}

template <class In>
__global__ void __launch_bounds__(kQuantizeThreads)
    quantize_rows_e4m3_kernel(const In* __restrict__ x, int k, E4M3Rows out) {
  wait_for_prior_kernels();
  const In* xr = x + int64_t{blockIdx.x} * k;
  write_e4m3_row(out, blockIdx.x, k, [&](int c) { return load_activation(xr, c); });
}

}  // namespace

void fp8_gemv(const float* x, int m, const Fp8Matrix& w, float* y, cudaStream_t stream) {
  if (w.rows == 0) return;
  switch (m) {
    case 1: return launch_gemv<1>(x, w, y, stream);
    case 2: return launch_gemv<2>(x, w, y, stream);
    case 3: return launch_gemv<3>(x, w, y, stream);
    case 4: return launch_gemv<4>(x, w, y, stream);
    case 5: return launch_gemv<5>(x, w, y, stream);
    case 6: return launch_gemv<6>(x, w, y, stream);
    case 7: return launch_gemv<7>(x, w, y, stream);
    case 8: return launch_gemv<8>(x, w, y, stream);
    default: fail("[cuda] fp8_gemv: ", m, " rows; at most ", kFp8GemvMaxRows);
  }
}

bool fp8_gemv_variant(int rows_per_warp, int unroll, int slices, const float* x, int m, const Fp8Matrix& w,
                      float* y, cudaStream_t stream) {
  if (w.rows == 0 || !vectorizable(x, w) || (m != 1 && m != 8)) return false;
  const auto run = [&]<int M>() {
    switch (rows_per_warp * 100 + unroll * 10 + slices) {
      case 221: launch_vec<M, 2, 2, 1>(x, w, y, stream); return true;
      case 421: launch_vec<M, 4, 2, 1>(x, w, y, stream); return true;
      case 422: launch_vec<M, 4, 2, 2>(x, w, y, stream); return true;
      case 424: launch_vec<M, 4, 2, 4>(x, w, y, stream); return true;
      case 441: launch_vec<M, 4, 4, 1>(x, w, y, stream); return true;
      case 442: launch_vec<M, 4, 4, 2>(x, w, y, stream); return true;
      case 821: launch_vec<M, 8, 2, 1>(x, w, y, stream); return true;
      case 822: launch_vec<M, 8, 2, 2>(x, w, y, stream); return true;
      default: return false;
    }
  };
  return m == 1 ? run.template operator()<1>() : run.template operator()<8>();
}

void fp8_codes_to_bf16(const Fp8Matrix& w, bf16_bits* out, cudaStream_t stream) {
  const int64_t count = int64_t{w.rows} * w.cols;
  if (count == 0) return;
  const bool vectors = count % 16 == 0 && reinterpret_cast<uintptr_t>(w.codes) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(out) % 16 == 0;
  launch_kernel("fp8_codes_to_bf16_kernel", fp8_codes_to_bf16_kernel, elementwise_blocks(vectors ? count / 16 : count),
                kElementwiseThreads, 0, stream, w.codes, count, reinterpret_cast<__nv_bfloat16*>(out), vectors);
}

void scale_rows_columns(float* y, const float* row_scales, const float* col_scales, int64_t rows, int64_t cols,
                        cudaStream_t stream) {
  const int64_t count = rows * cols;
  if (count == 0) return;
  launch_kernel("scale_rows_columns_kernel", scale_rows_columns_kernel, elementwise_blocks(count),
                kElementwiseThreads, 0, stream, y, row_scales, col_scales, rows, cols);
}

void quantize_rows_e4m3(InputActivations x, int64_t rows, int k, uint8_t* codes, float* scales, cudaStream_t stream) {
  if (rows == 0) return;
  const auto quantize = [&]<class In>(const In* in) {
    // 16-byte rows of f32, 8-byte ones of bf16: whole groups of four in aligned loads.
    const bool held = k % 4 == 0 && k <= 16 * 4 * kQuantizeThreads &&
                      reinterpret_cast<uintptr_t>(in) % (4 * sizeof(In)) == 0 &&
                      reinterpret_cast<uintptr_t>(codes) % 4 == 0;
    if (!held) {
      launch_kernel("quantize_rows_e4m3_kernel", quantize_rows_e4m3_kernel<In>, static_cast<unsigned>(rows),
                    kQuantizeThreads, 0, stream, in, k, E4M3Rows{codes, scales});
      return;
    }
    const auto run = [&]<int Vecs>() {
      launch_kernel("quantize_rows_e4m3_held_kernel", quantize_rows_e4m3_held_kernel<Vecs, In>,
                    static_cast<unsigned>(rows), kQuantizeThreads, 0, stream, in, k / 4, E4M3Rows{codes, scales});
    };
    const int vecs = k / 4;
    if (vecs <= 4 * kQuantizeThreads)
      run.template operator()<4>();
    else if (vecs <= 8 * kQuantizeThreads)
      run.template operator()<8>();
    else
      run.template operator()<16>();
  };
  if (x.bf16 != nullptr)
    quantize(reinterpret_cast<const __nv_bfloat16*>(x.bf16));
  else
    quantize(x.f32);
}

}  // namespace moxin::cuda
