// Decode-time linear layer: y[M, N] = x[M, K] W[N, K]^T (+ bias) for M <= 8 rows.
//
// Memory-bound: the bf16 weight matrix is read once per call, so the kernel is built to stream
// it at copy bandwidth. Each warp owns R consecutive weight rows; every lane issues U x R
// 16-byte weight loads (8 bf16 each) before using any of them, and every weight vector is
// applied to all M activation rows while it sits in registers. Activations stay f32 (read
// through L1, they are tiny and shared by all warps) and sums are f32, so the result differs
// from an f64 reference only by f32 rounding.
//
// Fused around the product (kernels.hpp's LinearFusion, at 1..kFusedGemvMaxRows rows): with a
// norm, every block first normalizes the residual rows x into shared memory exactly as
// rms_norm_kernel would (rms_inverse.cuh) and multiplies those; with accumulate, the output is
// added into y. Either gives the bits of the separate ops with one kernel boundary less: at batch
// 1 a boundary (drain, launch, ramp) costs about as much as reading a 4-bit layer's norm weights
// many times over.
#include <array>
#include <utility>

#include "backend/cuda/bf16_dot.cuh"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/rms_inverse.cuh"
#include "backend/cuda/streaming_load.cuh"
#include "backend/cuda/swiglu.cuh"
#include "backend/cuda/warp_reduce.cuh"

namespace moxin::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kLanes = 32;

// Activations from global memory through the read-only path, or from the block's normalized copy
// in shared memory.
template <bool Shared>
__device__ __forceinline__ float4 load_x(const float4* p) {
  if constexpr (Shared)
    return *p;
  else
    return __ldg(p);
}

// Applies one 16-byte weight vector per row (index `vec` along K) to all M activation rows.
template <int M, int R, bool Shared>
__device__ __forceinline__ void accumulate(const uint4 (&wv)[R], const float4* __restrict__ x4,
                                           int x4_stride, int vec, float (&acc)[M][R]) {
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const float4 a = load_x<Shared>(x4 + m * x4_stride + 2 * vec);
    const float4 b = load_x<Shared>(x4 + m * x4_stride + 2 * vec + 1);
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = dot8(wv[r], a, b, acc[m][r]);
  }
}

// Requires K % 8 == 0 and 16-byte aligned x and W rows (checked by the launcher).
// Gated: W is gate | up ([2 n, K], n outputs) and the warp's R slots are R / 2 pairs (gate row j,
// up row n + j); y[m, j] = silu(gate) * up, computed as swiglu_kernel computes it, so the fused
// op gives the bits of the GEMV followed by swiglu (the sums run in the same order for any R).
// NormIn: x is the residual stream, multiplied as rms_norm(x) (M * K floats of dynamic shared
// memory); AddOut: y += the result (y + out, as the add after the linear rounds it).
template <int M, int R, int U, bool Gated, bool NormIn, bool AddOut>
__global__ void __launch_bounds__(kWarpsPerBlock* kLanes)
    gemv_bf16_vec_kernel(const float* __restrict__ x, const uint4* __restrict__ w,
                         const float* __restrict__ bias, float* __restrict__ y, int n, int k, NormParams norm) {
  static_assert(!Gated || R % 2 == 0, "gated rows come in gate/up pairs");
  static_assert(!(Gated && AddOut), "the residual add follows a plain linear");
  constexpr int kOutputs = Gated ? R / 2 : R;  // outputs per warp
  const int lane = threadIdx.x % kLanes;
  const int row0 = (blockIdx.x * kWarpsPerBlock + threadIdx.x / kLanes) * kOutputs;
  if (!NormIn && row0 >= n) return;  // with a norm, every warp helps normalize first
  const int vecs = k / 8;
  const uint4* rows[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int output = min(row0 + (Gated ? r / 2 : r), n - 1);
    rows[r] = w + static_cast<size_t>(Gated && r % 2 ? n + output : output) * vecs;
  }
  const int x4_stride = k / 4;
  // The weights never depend on earlier kernels: start pulling this warp's first ones into L2
  // while the previous kernel (which produces x) drains.
#pragma unroll
  for (int u = 0; u < U; ++u)
#pragma unroll
    for (int r = 0; r < R; ++r)
      if (lane + u * kLanes < vecs)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(rows[r] + lane + u * kLanes));
  if constexpr (NormIn) prefetch_norm_weight(norm.weight, k);
  wait_for_prior_kernels();
  const float4* x4 = reinterpret_cast<const float4*>(x);
  if constexpr (NormIn) {
    extern __shared__ float4 normed[];
    __shared__ float scratch[kMaxRmsThreads / 32];
    stage_normed_rows<M, kWarpsPerBlock>(x, norm, k, normed, scratch);
    if (row0 >= n) return;
    x4 = normed;
  }

  float acc[M][R];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;

  int vec = lane;
  for (; vec + (U - 1) * kLanes < vecs; vec += U * kLanes) {
    uint4 wv[U][R];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < R; ++r) wv[u][r] = load_once_16(rows[r] + vec + u * kLanes);
#pragma unroll
    for (int u = 0; u < U; ++u) accumulate<M, R, NormIn>(wv[u], x4, x4_stride, vec + u * kLanes, acc);
  }
  for (; vec < vecs; vec += kLanes) {
    uint4 wv[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wv[r] = load_once_16(rows[r] + vec);
    accumulate<M, R, NormIn>(wv, x4, x4_stride, vec, acc);
  }
  allow_dependents();

#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = warp_sum(acc[m][r]);
  if (lane == 0) {
#pragma unroll
    for (int o = 0; o < kOutputs; ++o) {
      const int row = row0 + o;
      if (row >= n) break;
      if constexpr (Gated) {
        const float bg = bias ? bias[row] : 0.0f, bu = bias ? bias[n + row] : 0.0f;
#pragma unroll
        for (int m = 0; m < M; ++m)
          y[static_cast<size_t>(m) * n + row] = silu_times(acc[m][2 * o] + bg, acc[m][2 * o + 1] + bu);
      } else {
        const float b = bias ? bias[row] : 0.0f;
#pragma unroll
        for (int m = 0; m < M; ++m) {
          float& out = y[static_cast<size_t>(m) * n + row];
          out = AddOut ? out + (acc[m][o] + b) : acc[m][o] + b;
        }
      }
    }
  }
}

// Any K and alignment (e.g. odd in_features of a tiny test model): one warp per row, 2-byte
// loads. Not on any full-size model's hot path.
__global__ void gemv_bf16_scalar_kernel(const float* __restrict__ x, int m,
                                        const uint16_t* __restrict__ w,
                                        const float* __restrict__ bias, float* __restrict__ y,
                                        int n, int k) {
  wait_for_prior_kernels();
  const int lane = threadIdx.x % kLanes;
  const int row = blockIdx.x * kWarpsPerBlock + threadIdx.x / kLanes;
  if (row >= n) return;
  const uint16_t* wr = w + static_cast<size_t>(row) * k;
  float acc[kGemvMaxRows] = {};
  for (int i = lane; i < k; i += kLanes) {
    const float wi = __uint_as_float(static_cast<uint32_t>(wr[i]) << 16);
#pragma unroll
    for (int mm = 0; mm < kGemvMaxRows; ++mm)
      if (mm < m) acc[mm] = fmaf(wi, x[static_cast<size_t>(mm) * k + i], acc[mm]);
  }
#pragma unroll
  for (int mm = 0; mm < kGemvMaxRows; ++mm) acc[mm] = warp_sum(acc[mm]);
  if (lane == 0) {
    const float b = bias ? bias[row] : 0.0f;
#pragma unroll
    for (int mm = 0; mm < kGemvMaxRows; ++mm)
      if (mm < m) y[static_cast<size_t>(mm) * n + row] = acc[mm] + b;
  }
}

// n: outputs (gated: half of W's rows).
template <int M, int R, int U, bool Gated, bool NormIn = false, bool AddOut = false>
void launch_vec(const float* x, const bf16_bits* w, const float* bias, float* y, int n, int k,
                const NormParams& norm, cudaStream_t stream) {
  const int outputs_per_block = kWarpsPerBlock * (Gated ? R / 2 : R);
  const int blocks = (n + outputs_per_block - 1) / outputs_per_block;
  const size_t smem = NormIn ? static_cast<size_t>(M) * k * sizeof(float) : 0;
  launch_kernel("gemv_bf16_vec_kernel", gemv_bf16_vec_kernel<M, R, U, Gated, NormIn, AddOut>, blocks,
                kWarpsPerBlock * kLanes, smem, stream, x, reinterpret_cast<const uint4*>(w), bias, y, n, k, norm);
}

bool vector_path_usable(const float* x, const bf16_bits* w, int k) {
  return k % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

// The tiling per M (H100 sweep in docs/cuda-notes.md): one row per warp with 4 loads in flight
// streams best for M <= 2 (94% / 90% of the copy ceiling at M = 1); with more activation rows
// the L1 reads of x per weight byte grow with M, and sharing each x read across 4 weight rows
// wins (M = 8: 4 loads in flight per row for K = 4096, 71%; 2 for K = 14336, 58%).
template <int M, bool NormIn = false, bool AddOut = false>
void launch_default(const float* x, const bf16_bits* w, const float* bias, float* y, int n, int k,
                    const NormParams& norm, cudaStream_t stream) {
  if constexpr (M <= 2)
    launch_vec<M, 1, 4, false, NormIn, AddOut>(x, w, bias, y, n, k, norm, stream);
  else if constexpr (M <= 4)
    launch_vec<M, 2, 4, false, NormIn, AddOut>(x, w, bias, y, n, k, norm, stream);
  else if (k <= 8192)
    launch_vec<M, 4, 4, false, NormIn, AddOut>(x, w, bias, y, n, k, norm, stream);
  else
    launch_vec<M, 4, 2, false, NormIn, AddOut>(x, w, bias, y, n, k, norm, stream);
}

// Gated (gate | up with swiglu): the same loads in flight per lane as launch_default, with a gate
// and an up row in every warp (M <= 2: 2 rows x 2 steps instead of 1 row x 4).
template <int M, bool NormIn = false>
void launch_gated(const float* x, const bf16_bits* w, const float* bias, float* y, int n, int k,
                  const NormParams& norm, cudaStream_t stream) {
  if constexpr (M <= 2)
    launch_vec<M, 2, 2, true, NormIn>(x, w, bias, y, n, k, norm, stream);
  else if constexpr (M <= 4)
    launch_vec<M, 2, 4, true, NormIn>(x, w, bias, y, n, k, norm, stream);
  else if (k <= 8192)
    launch_vec<M, 4, 4, true, NormIn>(x, w, bias, y, n, k, norm, stream);
  else
    launch_vec<M, 4, 2, true, NormIn>(x, w, bias, y, n, k, norm, stream);
}

// The fused forms at M rows: gated and/or normalized input, or accumulated output.
template <int M>
void launch_fused(const float* x, const bf16_bits* w, const float* bias, float* y, int n, int k, bool gated,
                  const NormParams& norm, bool accumulate, cudaStream_t stream) {
  const bool norm_in = norm.weight != nullptr;
  if (gated)
    norm_in ? launch_gated<M, true>(x, w, bias, y, n, k, norm, stream)
            : launch_gated<M, false>(x, w, bias, y, n, k, norm, stream);
  else if (norm_in)
    launch_default<M, true, false>(x, w, bias, y, n, k, norm, stream);
  else if (accumulate)
    launch_default<M, false, true>(x, w, bias, y, n, k, norm, stream);
  else
    launch_default<M>(x, w, bias, y, n, k, norm, stream);
}

using LaunchFn = void (*)(const float*, const bf16_bits*, const float*, float*, int, int, const NormParams&,
                          cudaStream_t);
template <int... I>
constexpr std::array<LaunchFn, sizeof...(I)> launch_table(std::integer_sequence<int, I...>) {
  return {&launch_default<I + 1>...};
}
template <int... I>
constexpr std::array<LaunchFn, sizeof...(I)> gated_table(std::integer_sequence<int, I...>) {
  return {&launch_gated<I + 1>...};
}
// launch_default<M> / launch_gated<M> for M = 1..kGemvMaxRows, indexed by M - 1.
constexpr auto kLaunchDefault = launch_table(std::make_integer_sequence<int, kGemvMaxRows>{});
constexpr auto kLaunchGated = gated_table(std::make_integer_sequence<int, kGemvMaxRows>{});

bool fusion_active(const LinearFusion& fusion) { return fusion.norm_weight != nullptr || fusion.accumulate; }

void fused_gemv(const float* x, int m, const bf16_bits* w, const float* bias, float* y, int n, int k, bool gated,
                const LinearFusion& fusion, cudaStream_t stream) {
  MOXIN_CHECK(gemv_bf16_fusable(x, w, m, k, gated, fusion), "[cuda] gemv_bf16: the fused form (",
              fusion.norm_weight ? "rms_norm in" : "", fusion.accumulate ? "accumulated out" : "", ") does not take ",
              m, " rows of ", k, " inputs (1..", kFusedGemvMaxRows,
              " rows, K % 8 == 0, 16-byte aligned x, W and norm weight, the rows in 44 KB)");
  const NormParams norm{fusion.norm_weight, fusion.norm_eps, rms_threads(k, true)};
  if (m == 1)
    launch_fused<1>(x, w, bias, y, n, k, gated, norm, fusion.accumulate, stream);
  else
    launch_fused<2>(x, w, bias, y, n, k, gated, norm, fusion.accumulate, stream);
}

}  // namespace

bool gemv_bf16_fusable(const float* x, const bf16_bits* w, int m, int k, bool gated, const LinearFusion& fusion) {
  const bool norm_in = fusion.norm_weight != nullptr;
  if (norm_in && fusion.accumulate) return false;  // no linear both starts and ends a residual step
  if (gated && fusion.accumulate) return false;
  return m >= 1 && m <= kFusedGemvMaxRows && vector_path_usable(x, w, k) &&
         (!norm_in || (reinterpret_cast<uintptr_t>(fusion.norm_weight) % 16 == 0 &&
                       int64_t{m} * k <= kFusedGemvMaxNormedFloats));
}

void gemv_bf16(const float* x, int m, const bf16_bits* w, const float* bias, float* y, int n, int k,
               cudaStream_t stream, const LinearFusion& fusion) {
  if (n == 0 || m == 0) return;
  if (fusion_active(fusion)) return fused_gemv(x, m, w, bias, y, n, k, false, fusion, stream);
  if (!vector_path_usable(x, w, k)) {
    const int blocks = (n + kWarpsPerBlock - 1) / kWarpsPerBlock;
    launch_kernel("gemv_bf16_scalar_kernel", gemv_bf16_scalar_kernel, blocks,
                  kWarpsPerBlock * kLanes, 0, stream, x, m, w, bias, y, n, k);
    return;
  }
  MOXIN_CHECK(m >= 1 && m <= kGemvMaxRows, "[cuda] gemv_bf16: ", m, " rows; the GEMV path takes 1..",
              kGemvMaxRows);
  kLaunchDefault[m - 1](x, w, bias, y, n, k, NormParams{}, stream);
}

bool gemv_bf16_swiglu_usable(const float* x, const bf16_bits* w, int m, int k) {
  return m >= 1 && m <= kGemvMaxRows && vector_path_usable(x, w, k);
}

void gemv_bf16_swiglu(const float* x, int m, const bf16_bits* w, const float* bias, float* y, int n, int k,
                      cudaStream_t stream, const LinearFusion& fusion) {
  if (fusion_active(fusion)) {
    if (n > 0) fused_gemv(x, m, w, bias, y, n, k, true, fusion, stream);
    return;
  }
  MOXIN_CHECK(gemv_bf16_swiglu_usable(x, w, m, k), "[cuda] gemv_bf16_swiglu: ", m, " rows of ", k,
              " inputs (needs 1..", kGemvMaxRows, " rows, K % 8 == 0, 16-byte aligned x and W)");
  if (n == 0) return;
  kLaunchGated[m - 1](x, w, bias, y, n, k, NormParams{}, stream);
}

}  // namespace moxin::cuda
