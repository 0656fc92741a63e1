// Element-wise and row-copy ops on f32 activations: activations, residual adds, gathers.
// All are memory-bound grid-stride loops; erf/exp use the accurate (non-intrinsic) functions
// so results match PyTorch's f32 to a few ulp.
#include "backend/cuda/activation_store.cuh"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/e4m3_rows.cuh"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/residual_add.cuh"
#include "backend/cuda/swiglu.cuh"

namespace moxin::cuda {
namespace {

#define MOXIN_GRID_STRIDE(i, count)                                             \
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < (count); \
       i += int64_t{gridDim.x} * blockDim.x)

// gelu(v) = v / 2 * erfc(-v / sqrt(2)): 1 + erf(z) == erfc(-z) has no cancellation in the negative
// tail (1 + erf lost all relative accuracy there: the op test once found 43% error at gelu(x) ~
// -5e-8). What remains is the rounding of z = -v / sqrt(2) itself, which erfc amplifies by ~2 z^2
// in the tail; z is therefore carried as z_hi + z_lo (an exact product split) and erfc corrected
// to first order: erfc(z_hi + z_lo) ~ erfc(z_hi) - 2 / sqrt(pi) exp(-z_hi^2) z_lo. A few f32 ulp
// everywhere (erfcf's 4 at most), in f32: the double erfc this replaced made the kernel FP64-bound
// (12.5 us for a 261 x 4096 ViT activation on an H100, ~4x its bytes).
__device__ __forceinline__ float gelu_erf_value(float v) {
  constexpr float kInvSqrt2Hi = 0.70710677f;        // f32(1 / sqrt(2))
  constexpr float kInvSqrt2Lo = 1.21016175e-08f;    // 1 / sqrt(2) - kInvSqrt2Hi
  constexpr float kTwoOverSqrtPi = 1.12837917f;
  const float z_hi = -v * kInvSqrt2Hi;
  const float z_lo = fmaf(-v, kInvSqrt2Hi, -z_hi) - v * kInvSqrt2Lo;
  const float tail = erfcf(z_hi) - kTwoOverSqrtPi * expf(-z_hi * z_hi) * z_lo;
  return 0.5f * v * tail;
}

// y may be x (in place, f32); a bf16 y is the next GEMM's input, rounded here instead of by a
// conversion kernel after (the same bits).
template <class Out>
__global__ void gelu_erf_kernel(const float* x, Out* y, int64_t count) {
  wait_for_prior_kernels();
  MOXIN_GRID_STRIDE(i, count) { store_activation(y, i, gelu_erf_value(x[i])); }
}

// y [rows, cols] from gate_up [rows, 2 * cols] = gate | up: blocks stride over rows (y) and
// columns (x), so no thread divides a flat index by the row length.
// gate_up f32, or bf16 as a prefill GEMM wrote it; y as f32, or bf16 for a linear that takes
// bf16 activations (activation_store.cuh).
template <class In, class Out>
__global__ void swiglu_kernel(const In* __restrict__ gate_up, Out* __restrict__ y, int64_t rows, int cols) {
  wait_for_prior_kernels();
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const In* gate = gate_up + r * 2 * cols;
    Out* out = y + r * cols;
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
      store_activation(out, c, silu_times(load_activation(gate, c), load_activation(gate, cols + c)));
    }
  }
}

template <class In, class Out>
__global__ void swiglu_scaled_kernel(const In* __restrict__ gate_up, const float* __restrict__ row_scales,
                                     const float* __restrict__ col_scales, Out* __restrict__ y, int64_t rows,
                                     int cols) {
  wait_for_prior_kernels();
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const In* gate = gate_up + r * 2 * cols;
    const float row = row_scales[r];
    Out* out = y + r * cols;
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x)
      store_activation(out, c,
                       silu_times(load_activation(gate, c) * (row * col_scales[c]),
                                  load_activation(gate, cols + c) * (row * col_scales[cols + c])));
  }
}

// The bf16 gate_up of a prefill, 8 columns per thread (16-byte loads; cols % 8 == 0): the
// scalar kernel's 2-byte accesses moved its 87 MB per layer at ~1.2 TB/s (ncu, 1024 tokens).
// Same formula per element as swiglu_kernel (Scaled: as swiglu_scaled_kernel), so the same bits.
template <class Out, bool Scaled>
__global__ void swiglu_bf16_vec8_kernel(const uint4* __restrict__ gate_up, const float* __restrict__ row_scales,
                                        const float* __restrict__ col_scales, Out* __restrict__ y, int64_t rows,
                                        int cols) {
  wait_for_prior_kernels();
  const int vecs = cols / 8;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const uint4* gate = gate_up + r * 2 * vecs;
    const float row = Scaled ? row_scales[r] : 1.0f;
    Out* out = y + r * cols;
    for (int v = blockIdx.x * blockDim.x + threadIdx.x; v < vecs; v += gridDim.x * blockDim.x) {
      const uint4 g = gate[v], u = gate[vecs + v];
      const auto* gh = reinterpret_cast<const __nv_bfloat162*>(&g);
      const auto* uh = reinterpret_cast<const __nv_bfloat162*>(&u);
      float gate_scale[8], up_scale[8];
      if constexpr (Scaled) {
        const auto* gs = reinterpret_cast<const float4*>(col_scales + v * 8);
        const auto* us = reinterpret_cast<const float4*>(col_scales + cols + v * 8);
        const float4 g0 = gs[0], g1 = gs[1], u0 = us[0], u1 = us[1];
        const float gv[8] = {g0.x, g0.y, g0.z, g0.w, g1.x, g1.y, g1.z, g1.w};
        const float uv[8] = {u0.x, u0.y, u0.z, u0.w, u1.x, u1.y, u1.z, u1.w};
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          gate_scale[i] = row * gv[i];
          up_scale[i] = row * uv[i];
        }
      }
      float values[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float2 gf = __bfloat1622float2(gh[i]), uf = __bfloat1622float2(uh[i]);
        if constexpr (Scaled) {
          gf = make_float2(gf.x * gate_scale[2 * i], gf.y * gate_scale[2 * i + 1]);
          uf = make_float2(uf.x * up_scale[2 * i], uf.y * up_scale[2 * i + 1]);
        }
        values[2 * i] = silu_times(gf.x, uf.x);
        values[2 * i + 1] = silu_times(gf.y, uf.y);
      }
      store_activations8(out, int64_t{v} * 8, values);
    }
  }
}

__global__ void add_kernel(float* __restrict__ x, const float* __restrict__ y, int64_t count) {
  wait_for_prior_kernels();
  MOXIN_GRID_STRIDE(i, count) x[i] += y[i];
}

__global__ void add_scaled_kernel(float* __restrict__ x, const float* __restrict__ y,
                                  const float* __restrict__ scale, int64_t count, int64_t cols) {
  wait_for_prior_kernels();
  MOXIN_GRID_STRIDE(i, count) x[i] = residual_scaled(x[i], scale[i % cols], y[i]);
}

__global__ void add_rows_cyclic_kernel(float* __restrict__ x, const float* __restrict__ table,
                                       int64_t count, int64_t cols, int64_t table_rows) {
  wait_for_prior_kernels();
  MOXIN_GRID_STRIDE(i, count) {
    const int64_t row = i / cols;
    x[i] += table[(row % table_rows) * cols + i % cols];
  }
}

__global__ void gather_rows_kernel(const float* __restrict__ x, int64_t x_rows, int64_t cols,
                                   const int32_t* __restrict__ rows, int64_t count,
                                   float* __restrict__ y) {
  wait_for_prior_kernels();
  MOXIN_GRID_STRIDE(i, count * cols) {
    const int32_t src = rows[i / cols];
    y[i] = (src >= 0 && src < x_rows) ? x[src * cols + i % cols] : __int_as_float(0x7fc00000);
  }
}

__global__ void embedding_kernel(const int32_t* __restrict__ ids, const int32_t* __restrict__ sources,
                                 const int32_t* __restrict__ drawn, int64_t count,
                                 const uint16_t* __restrict__ table, int64_t vocab, int64_t cols,
                                 float* __restrict__ y) {
  wait_for_prior_kernels();
  MOXIN_GRID_STRIDE(i, count * cols) {
    const int64_t row = i / cols;
    const int32_t source = sources ? sources[row] : -1;
    const int32_t id = source >= 0 ? drawn[source] : ids[row];
    y[i] = (id >= 0 && id < vocab)
               ? __uint_as_float(static_cast<uint32_t>(table[id * cols + i % cols]) << 16)
               : __int_as_float(0x7fc00000);
  }
}

#undef MOXIN_GRID_STRIDE

// One block per row: the swiglu of a row as per-token E4M3 codes (the down projection's input on
// the FP8 tensor cores), each value by swiglu_kernel's formula (Scaled: swiglu_scaled_kernel's),
// so the codes are those of quantize_rows_e4m3 on the bf16 output. Each thread holds up to Held
// groups of four values in registers between the row's amax and its codes (a 14336-wide row: 7
// groups a thread of 512); wider rows compute the rest twice. (Computing every value twice,
// reading the row again from L2, took 75.6 us a layer of a 1024-token prefill on an H100 against
// 61 for the bf16 swiglu and the quantization pass it replaces.)
constexpr int kSwigluRowThreads = 512;
constexpr int kSwigluHeld = 8;

template <class In, bool Scaled>
__global__ void __launch_bounds__(kSwigluRowThreads)
    swiglu_e4m3_kernel(const In* __restrict__ gate_up, const float* __restrict__ row_scales,
                       const float* __restrict__ col_scales, E4M3Rows y, int cols, bool vec4) {
  wait_for_prior_kernels();
  const int64_t r = blockIdx.x;
  const In* gate = gate_up + r * 2 * cols;
  const float row = Scaled ? row_scales[r] : 1.0f;
  if (vec4) {
    write_e4m3_row4<kSwigluHeld>(y, r, cols / 4, [&](int c) {
      float4 g = load4_activations(gate, 4 * c), u = load4_activations(gate, cols + 4 * c);
      if constexpr (Scaled) {
        const float4 gs = reinterpret_cast<const float4*>(col_scales)[c];
        const float4 us = reinterpret_cast<const float4*>(col_scales + cols)[c];
        g = make_float4(g.x * (row * gs.x), g.y * (row * gs.y), g.z * (row * gs.z), g.w * (row * gs.w));
        u = make_float4(u.x * (row * us.x), u.y * (row * us.y), u.z * (row * us.z), u.w * (row * us.w));
      }
      return make_float4(silu_times(g.x, u.x), silu_times(g.y, u.y), silu_times(g.z, u.z), silu_times(g.w, u.w));
    });
    return;
  }
  write_e4m3_row(y, r, cols, [&](int c) {
    if constexpr (Scaled)
      return silu_times(load_activation(gate, c) * (row * col_scales[c]),
                        load_activation(gate, cols + c) * (row * col_scales[cols + c]));
    else
      return silu_times(load_activation(gate, c), load_activation(gate, cols + c));
  });
}

template <class In>
void launch_swiglu_e4m3(const In* gate_up, const float* row_scales, const float* col_scales, E4M3Rows y, int64_t rows,
                        int64_t cols, cudaStream_t stream) {
  if (rows * cols == 0) return;
  // Groups of four: 4-byte code words, and aligned loads of the inputs and column scales.
  const bool vec4 = cols % 4 == 0 && reinterpret_cast<uintptr_t>(y.codes) % 4 == 0 &&
                    reinterpret_cast<uintptr_t>(gate_up) % (4 * sizeof(In)) == 0 &&
                    reinterpret_cast<uintptr_t>(col_scales) % 16 == 0;
  const auto launch = [&]<bool Scaled>() {
    launch_kernel("swiglu_e4m3_kernel", swiglu_e4m3_kernel<In, Scaled>, static_cast<unsigned>(rows),
                  kSwigluRowThreads, 0, stream, gate_up, row_scales, col_scales, y, static_cast<int>(cols), vec4);
  };
  if (row_scales != nullptr)
    launch.template operator()<true>();
  else
    launch.template operator()<false>();
}

}  // namespace

void gelu_erf(const float* x, Activations y, int64_t count, cudaStream_t stream) {
  if (count == 0) return;
  with_activations(y, [&]<class Out>(Out* out) {
    launch_kernel("gelu_erf_kernel", gelu_erf_kernel<Out>, elementwise_blocks(count), kElementwiseThreads, 0, stream,
                  x, out, count);
  });
}

namespace {

template <class In>
void launch_swiglu(const In* gate_up, Activations y, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows * cols == 0) return;
  const unsigned col_blocks = elementwise_blocks(cols);
  const dim3 grid(col_blocks, static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
  with_activations(y, [&]<class Out>(Out* out) {
    launch_kernel("swiglu_kernel", swiglu_kernel<In, Out>, grid, kElementwiseThreads, 0, stream, gate_up, out,
                  rows, static_cast<int>(cols));
  });
}

}  // namespace

void swiglu(const float* gate_up, Activations y, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (y.e4m3.codes != nullptr) return launch_swiglu_e4m3(gate_up, nullptr, nullptr, y.e4m3, rows, cols, stream);
  launch_swiglu(gate_up, y, rows, cols, stream);
}

// The bf16 gate_up's vectorized kernel where cols and the pointers allow it (the column scales
// are read 8 at a time too); false where the caller takes the scalar kernel.
static bool launch_swiglu_bf16_vec8(const bf16_bits* gate_up, const float* row_scales, const float* col_scales,
                                    Activations y, int64_t rows, int64_t cols, cudaStream_t stream) {
  const bool aligned = reinterpret_cast<uintptr_t>(gate_up) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(y.bf16 ? static_cast<void*>(y.bf16) : y.f32) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(col_scales) % 16 == 0;
  if (cols % 8 != 0 || !aligned) return false;
  if (rows * cols == 0) return true;
  const dim3 grid(elementwise_blocks(cols / 8), static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
  const auto launch = [&]<bool Scaled>() {
    with_activations(y, [&]<class Out>(Out* out) {
      launch_kernel("swiglu_bf16_vec8_kernel", swiglu_bf16_vec8_kernel<Out, Scaled>, grid, kElementwiseThreads, 0,
                    stream, reinterpret_cast<const uint4*>(gate_up), row_scales, col_scales, out, rows,
                    static_cast<int>(cols));
    });
  };
  if (row_scales != nullptr)
    launch.template operator()<true>();
  else
    launch.template operator()<false>();
  return true;
}

void swiglu_scaled(InputActivations gate_up, const float* row_scales, const float* col_scales, Activations y,
                   int64_t rows, int64_t cols, cudaStream_t stream) {
  if (y.e4m3.codes != nullptr) {
    if (gate_up.bf16 != nullptr)
      launch_swiglu_e4m3(reinterpret_cast<const __nv_bfloat16*>(gate_up.bf16), row_scales, col_scales, y.e4m3, rows,
                         cols, stream);
    else
      launch_swiglu_e4m3(gate_up.f32, row_scales, col_scales, y.e4m3, rows, cols, stream);
    return;
  }
  if (gate_up.bf16 != nullptr && launch_swiglu_bf16_vec8(gate_up.bf16, row_scales, col_scales, y, rows, cols, stream))
    return;
  if (rows * cols == 0) return;
  const dim3 grid(elementwise_blocks(cols), static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
  const auto launch = [&]<class In>(const In* in) {
    with_activations(y, [&]<class Out>(Out* out) {
      launch_kernel("swiglu_scaled_kernel", swiglu_scaled_kernel<In, Out>, grid, kElementwiseThreads, 0, stream, in,
                    row_scales, col_scales, out, rows, static_cast<int>(cols));
    });
  };
  if (gate_up.bf16 != nullptr)
    launch(reinterpret_cast<const __nv_bfloat16*>(gate_up.bf16));
  else
    launch(gate_up.f32);
}

void swiglu_bf16_input(const bf16_bits* gate_up, Activations y, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (y.e4m3.codes != nullptr)
    return launch_swiglu_e4m3(reinterpret_cast<const __nv_bfloat16*>(gate_up), nullptr, nullptr, y.e4m3, rows, cols,
                              stream);
  if (!launch_swiglu_bf16_vec8(gate_up, nullptr, nullptr, y, rows, cols, stream))
    launch_swiglu(reinterpret_cast<const __nv_bfloat16*>(gate_up), y, rows, cols, stream);
}

void add(float* x, const float* y, int64_t count, cudaStream_t stream) {
  if (count == 0) return;
  launch_kernel("add_kernel", add_kernel, elementwise_blocks(count), kElementwiseThreads, 0, stream,
                x, y, count);
}

void add_scaled(float* x, const float* y, const float* scale, int64_t rows, int64_t cols,
                cudaStream_t stream) {
  const int64_t count = rows * cols;
  if (count == 0) return;
  launch_kernel("add_scaled_kernel", add_scaled_kernel, elementwise_blocks(count),
                kElementwiseThreads, 0, stream, x, y, scale, count, cols);
}

void add_rows_cyclic(float* x, const float* table, int64_t rows, int64_t cols, int64_t table_rows,
                     cudaStream_t stream) {
  const int64_t count = rows * cols;
  if (count == 0) return;
  launch_kernel("add_rows_cyclic_kernel", add_rows_cyclic_kernel, elementwise_blocks(count),
                kElementwiseThreads, 0, stream, x, table, count, cols, table_rows);
}

void gather_rows(const float* x, int64_t x_rows, int64_t cols, const int32_t* rows, int64_t count,
                 float* y, cudaStream_t stream) {
  if (count * cols == 0) return;
  launch_kernel("gather_rows_kernel", gather_rows_kernel, elementwise_blocks(count * cols),
                kElementwiseThreads, 0, stream, x, x_rows, cols, rows, count, y);
}

void embedding(const int32_t* ids, const int32_t* sources, const int32_t* drawn, int64_t count,
               const bf16_bits* table, int64_t vocab, int64_t cols, float* y, cudaStream_t stream) {
  if (count * cols == 0) return;
  launch_kernel("embedding_kernel", embedding_kernel, elementwise_blocks(count * cols),
                kElementwiseThreads, 0, stream, ids, sources, drawn, count, table, vocab, cols, y);
}

}  // namespace moxin::cuda
