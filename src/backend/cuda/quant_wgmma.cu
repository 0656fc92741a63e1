// Quantized prefill (MLX affine 4/8-bit weights, more than kQuantMmaMaxRows rows) on Hopper's
// warpgroup MMA, reading the codes: y[M, N] = x[M, K] W^T with the weights dequantized in
// registers as wgmma's A operand, never written to memory (the prefill path otherwise dequantizes
// each matrix into a bf16 copy for cuBLASLt: ~185 us of a 4-bit layer's ~950 at 1024 tokens,
// H100 session 27). A CTA of two warpgroups multiplies 128 weight rows (64 a warpgroup, the A
// operand from registers) by 128 tokens (the B operand, bf16 activations staged in shared memory
// by cp.async in a 3-stage ring, 128-byte swizzled K-major tiles), f32 accumulators in registers.
//
// The codes are read as quant_mma.cu reads them (quant_fragments.cuh): lane t of a quad owns
// inputs [t * E, (t + 1) * E) of each K block of 4 * E inputs (E = 32 for 4-bit, 16 for 8-bit),
// one 16-byte load per row, and mma step s multiplies its code pairs 2s and 2s + 1. wgmma's A
// fragment for a k16 step is mma.sync's m16n8k16 A fragment per warp, so logical k (0..15) of
// step s stands for a fixed input of the K block (logical_input below); the activations are
// rewritten once per call in that order (logical_activations_kernel), so that step s's B tile is
// 16 contiguous values per token. Sums meet in f32 in wgmma's accumulators in K order; no atomics.
//
// Written without a GPU (session 28): compiles for sm_90a; not yet run. Opt-in
// (MOXIN_CUDA_QUANT_WGMMA=1, CudaBackend::set_quant_wgmma) until a GPU run has shown it right and
// faster than dequantize + cuBLASLt.
#include <cuda_bf16.h>

#include <cstdint>

#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/quant_format.cuh"
#include "backend/cuda/quant_fragments.cuh"
#include "backend/cuda/streaming_load.cuh"

namespace moxin::cuda {
namespace {

constexpr int kThreads = 256;       // two warpgroups
constexpr int kRowsPerCta = 128;    // 64 weight rows a warpgroup (wgmma M)
constexpr int kTokensPerCta = 128;  // wgmma N
constexpr int kStages = 3;
constexpr int kSubtileBytes = kTokensPerCta * 128;  // 128 tokens x 64 bf16 (one 128-byte swizzle row each)

template <int Bits>
constexpr int lane_inputs() {  // E
  return Bits == 4 ? 32 : 16;
}
template <int Bits>
constexpr int block_inputs() {
  return 4 * lane_inputs<Bits>();
}
template <int Bits>
constexpr int block_steps() {  // k16 steps per K block
  return block_inputs<Bits>() / 16;
}
template <int Bits>
constexpr int stage_bytes() {
  return kTokensPerCta * block_inputs<Bits>() * 2;
}
template <int Bits>
constexpr int smem_bytes() {
  return kStages * stage_bytes<Bits>() + 1024;  // + room to align the ring to 1024 bytes
}

// The input of a K block that logical k (0..15) of k16 step s multiplies: A register 2 * half + h
// holds rows g / g + 8 at logical k = 2t + 8 * half + {0, 1}, built from code pair 2s + half of
// lane t's words (low half first).
template <int Bits>
__host__ __device__ constexpr int logical_input(int s, int k) {
  const int t = (k % 8) / 2, half = k / 8, which = k % 2;
  if constexpr (Bits == 4)  // pair p = 2 (s % 2) + half of word s / 2: nibbles p and p + 4
    return t * 32 + (s / 2) * 8 + 2 * (s % 2) + half + 4 * which;
  else  // pair p = half of word s: bytes 2p and 2p + 1
    return t * 16 + s * 4 + 2 * half + which;
}

__device__ __forceinline__ uint32_t bf16_bits_of(uint16_t v) { return v; }
__device__ __forceinline__ uint32_t bf16_bits_of(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }

// x [m, k] (bf16, or f32 rounded to bf16) rewritten so that each K block is its k16 steps one
// after the other, each step's 16 values in logical order. A thread writes 8 values (16 bytes).
template <int Bits, class X>
__global__ void logical_activations_kernel(const X* __restrict__ x, int m, int k, uint4* __restrict__ out) {
  wait_for_prior_kernels();
  constexpr int kBlock = block_inputs<Bits>();
  const int64_t chunks = int64_t{m} * (k / 8);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < chunks; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t token = i / (k / 8);
    const int j = static_cast<int>(i % (k / 8)) * 8;  // logical position of the chunk's first value
    const int kb = j / kBlock, s = (j % kBlock) / 16, k0 = j % 16;
    const X* row = x + token * k + kb * kBlock;
    uint32_t words[4];
#pragma unroll
    for (int e = 0; e < 4; ++e)
      words[e] = bf16_bits_of(row[logical_input<Bits>(s, k0 + 2 * e)]) |
                 bf16_bits_of(row[logical_input<Bits>(s, k0 + 2 * e + 1)]) << 16;
    out[i] = make_uint4(words[0], words[1], words[2], words[3]);
  }
}

__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
// Shared-memory writes of the generic proxy (cp.async) made visible to wgmma's async proxy.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
// wgmma exists only in sm_90a code; nvcc also emits compute_90 PTX (no wgmma) beside it, whose
// kernel never runs where quant_wgmma_supported() is false.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MOXIN_WGMMA(...) asm volatile(__VA_ARGS__)
constexpr int kHasWgmma = 1;
#else
#define MOXIN_WGMMA(...) __trap()
constexpr int kHasWgmma = 0;
#endif

__device__ __forceinline__ void wgmma_fence() { MOXIN_WGMMA("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { MOXIN_WGMMA("wgmma.commit_group.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { MOXIN_WGMMA("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }

// Shared-memory matrix descriptor of a K-major tile with 128-byte swizzle: start address, the
// leading byte offset unused (1), 1024 bytes between groups of 8 rows, swizzle mode 1 (128B).
__device__ __forceinline__ uint64_t b_descriptor(uint32_t smem_addr) {
  return uint64_t{(smem_addr & 0x3FFFF) >> 4} | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}

// d[64] += A (64 x 16, bf16 from registers) * B (16 x 128 tokens, bf16 from shared memory); the
// predicate's 1 keeps d (accumulate), the immediates are A's and B's scales (1) and B untransposed.
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
  MOXIN_WGMMA(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, 0;\n"
      "}\n"
      :
        "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1)
      : "memory");
}

__global__ void wgmma_probe_kernel(int* has_wgmma) { *has_wgmma = kHasWgmma; }

template <int Bits, bool F32Scales>
struct LaneCodes {
  uint4 words[2];  // rows g and g + 8 of the warp's 16
  ScaleBiasRaw<F32Scales> raw[2];
};

// grid (token tiles, row tiles): the CTAs of one row tile run together, so a weight tile is read
// from memory once and the activations (a few MB) stay in L2.
template <int Bits, bool F32Scales>
__global__ void __launch_bounds__(kThreads, 1)
    quant_wgmma_kernel(const uint16_t* __restrict__ xl, int m, QuantMatrix w, float* __restrict__ y) {
  constexpr int kBlock = block_inputs<Bits>();
  constexpr int kSteps = block_steps<Bits>();
  constexpr int kPairsPerWord = Bits == 4 ? 4 : 2;
  constexpr int kChunksPerToken = kBlock / 8;  // 16-byte chunks of a token's K block
  extern __shared__ uint8_t smem_raw[];
  const uint32_t ring = (static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) + 1023) & ~1023u;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int token0 = blockIdx.x * kTokensPerCta;
  const int row_base = blockIdx.y * kRowsPerCta + warp * 16;  // warps 0-3: warpgroup 0
  const int k = w.cols;
  const int kblocks = k / kBlock;
  const int words_per_row = k * Bits / 32;
  const int groups = k / w.group_size;
  const int group_shift = __ffs(w.group_size) - 1;
  const uint32_t* codes[2];
  const ScaleBiasRaw<F32Scales>* pairs[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t row = min(row_base + 8 * h + g, w.rows - 1);
    codes[h] = w.codes + row * words_per_row + 4 * t;
    pairs[h] = static_cast<const ScaleBiasRaw<F32Scales>*>(w.scale_bias) + row * groups;
  }
  auto load_codes = [&](int kb, LaneCodes<Bits, F32Scales>& c) {
    if (kb >= kblocks) return;
    const int group = (kb * kBlock + t * lane_inputs<Bits>()) >> group_shift;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      c.words[h] = load_once_16(codes[h] + kb * (kBlock * Bits / 32));
      c.raw[h] = load_scale_bias<F32Scales>(pairs[h], group);
    }
  };
  // Stage kb % kStages <- the activations of K block kb for the CTA's tokens (zeros past m).
  auto load_stage = [&](int kb) {
    if (kb >= kblocks) return;
    const uint32_t stage = ring + (kb % kStages) * stage_bytes<Bits>();
    for (int i = threadIdx.x; i < kTokensPerCta * kChunksPerToken; i += kThreads) {
      const int r = i / kChunksPerToken, c = i % kChunksPerToken;
      const bool valid = token0 + r < m;
      const uint16_t* src = xl + (valid ? int64_t{token0 + r} * k + kb * kBlock + c * 8 : 0);
      const uint32_t dst = stage + (c / 8) * kSubtileBytes + r * 128 + (((c % 8) ^ (r % 8)) << 4);
      cp_async_16(dst, src, valid);
    }
  };

  LaneCodes<Bits, F32Scales> cur{}, next{};
  load_codes(0, cur);  // weights only: may run before the previous kernel finishes
  wait_for_prior_kernels();
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    load_stage(s);
    cp_async_commit();
  }
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;

  for (int kb = 0; kb < kblocks; ++kb) {
    cp_async_wait<kStages - 2>();  // this thread's copies of stage kb
    fence_proxy_async();
    __syncthreads();  // everyone's copies; every wgmma of block kb - 1 has finished (waited below)
    load_stage(kb + kStages - 1);  // into the stage block kb - 1 used
    cp_async_commit();
    load_codes(kb + 1, next);

    RowScale scale[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) scale[h] = row_scale<F32Scales>(cur.raw[h]);
    uint32_t a[kSteps][4];
#pragma unroll
    for (int s = 0; s < kSteps; ++s)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int pair = 2 * s + half;
          const uint32_t word = (&cur.words[h].x)[pair / kPairsPerWord];
          a[s][2 * half + h] = dequantize_pair<F32Scales>(code_pair_bf16<Bits>(word, pair % kPairsPerWord), scale[h]);
        }
    const uint32_t stage = ring + (kb % kStages) * stage_bytes<Bits>();
    wgmma_fence();
#pragma unroll
    for (int s = 0; s < kSteps; ++s)
      wgmma_m64n128k16(acc, a[s], b_descriptor(stage + (s / 4) * kSubtileBytes + (s % 4) * 32));
    wgmma_commit();
    wgmma_wait_all();
    cur = next;
  }
  allow_dependents();

  // acc[4j + 2 rh + c]: row g + 8 rh of the warp's 16, token 8j + 2t + c.
#pragma unroll
  for (int i = 0; i < 64; ++i) {
    const int row = row_base + g + 8 * ((i / 2) % 2);
    const int token = token0 + 8 * (i / 4) + 2 * t + i % 2;
    if (row < w.rows && token < m) y[int64_t{token} * w.rows + row] = acc[i];
  }
}

template <int Bits, bool F32Scales>
void allow_smem() {
  MOXIN_CUDA_CHECK(cudaFuncSetAttribute(quant_wgmma_kernel<Bits, F32Scales>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        smem_bytes<Bits>()));
}

template <int Bits, bool F32Scales, class X>
void launch(const X* x, int m, const QuantMatrix& w, bf16_bits* x_scratch, float* y, cudaStream_t stream) {
  auto* xl = reinterpret_cast<uint4*>(x_scratch);
  launch_kernel("logical_activations_kernel", logical_activations_kernel<Bits, X>,
                elementwise_blocks(int64_t{m} * w.cols / 8), kElementwiseThreads, 0, stream, x, m, w.cols, xl);
  const dim3 grid((m + kTokensPerCta - 1) / kTokensPerCta, (w.rows + kRowsPerCta - 1) / kRowsPerCta);
  launch_kernel("quant_wgmma_kernel", quant_wgmma_kernel<Bits, F32Scales>, grid, kThreads, smem_bytes<Bits>(),
                stream, reinterpret_cast<const uint16_t*>(xl), m, w, y);
}

template <class X>
void run(const X* x, int m, const QuantMatrix& w, bf16_bits* x_scratch, float* y, cudaStream_t stream) {
  MOXIN_CHECK(quant_wgmma_fits(w), "[cuda] quant_wgmma: ", w.bits, "-bit weights, group ", w.group_size, ", ",
              w.cols, " inputs (4 or 8 bits, groups of 32 or more, inputs in whole K blocks required)");
  if (w.rows == 0 || m == 0) return;
  if (w.bits == 4)
    w.f32_scales ? launch<4, true>(x, m, w, x_scratch, y, stream) : launch<4, false>(x, m, w, x_scratch, y, stream);
  else
    w.f32_scales ? launch<8, true>(x, m, w, x_scratch, y, stream) : launch<8, false>(x, m, w, x_scratch, y, stream);
}

}  // namespace

bool prepare_quant_wgmma(cudaStream_t stream) {
  int device = 0;
  cudaDeviceProp props{};
  MOXIN_CUDA_CHECK(cudaGetDevice(&device));
  MOXIN_CUDA_CHECK(cudaGetDeviceProperties(&props, device));
  if (props.major != 9) return false;
  int* flag = nullptr;
  int has = 0;
  MOXIN_CUDA_CHECK(cudaMallocAsync(&flag, sizeof(int), stream));
  launch_kernel("wgmma_probe_kernel", wgmma_probe_kernel, 1, 1, 0, stream, flag);
  MOXIN_CUDA_CHECK(cudaMemcpyAsync(&has, flag, sizeof(int), cudaMemcpyDeviceToHost, stream));
  MOXIN_CUDA_CHECK(cudaFreeAsync(flag, stream));
  MOXIN_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (has != 1) return false;
  allow_smem<4, false>();
  allow_smem<4, true>();
  allow_smem<8, false>();
  allow_smem<8, true>();
  return true;
}

bool quant_wgmma_fits(const QuantMatrix& w) {
  return (w.bits == 4 || w.bits == 8) && w.group_size >= 32 && w.cols % (w.bits == 4 ? 128 : 64) == 0;
}

void quant_wgmma(const bf16_bits* x, int m, const QuantMatrix& w, bf16_bits* x_scratch, float* y,
                 cudaStream_t stream) {
  run(reinterpret_cast<const uint16_t*>(x), m, w, x_scratch, y, stream);
}

void quant_wgmma(const float* x, int m, const QuantMatrix& w, bf16_bits* x_scratch, float* y, cudaStream_t stream) {
  run(x, m, w, x_scratch, y, stream);
}

}  // namespace moxin::cuda
