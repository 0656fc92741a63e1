// The rest of a bf16 decoder layer after its attention, at 1..2 rows, in one launch:
//   x += o(attn); act = swiglu(gate_up(rms_norm(x))); x += down(act); qkv = next_qkv(rms_norm'(x))
// Four decode GEMVs that would be four kernels (gemv.cu's fused forms) run as phases of one
// persistent kernel: one block per SM (or a few), every warp walking its share of each matrix's
// rows, the phases separated by a barrier over the whole grid. At batch 1 a kernel boundary
// (drain, launch, ramp) costs ~4.5 us against ~1 us for a grid barrier (docs/cuda-notes.md,
// session 25), and before waiting at one a warp asks L2 for the first weights of its next rows,
// so the next phase starts on loads already under way.
//
// Each output row's sum is formed by gemv_warp.cuh exactly as the GEMV kernels form it, and each
// norm by stage_normed_rows as rms_norm_kernel forms it: the bits of the separate fused ops.
// Every phase's input (attention output, normalized residual, swiglu output) is staged in shared
// memory once per block; what earlier phases wrote is read only after a barrier, through L2
// (ld.global.cg) or after the barrier's acquire, never through the read-only path.
#include <algorithm>
#include <cstdlib>
#include <vector>

#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/gemv_warp.cuh"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/rms_inverse.cuh"

namespace moxin::cuda {
namespace {

constexpr int kTailWarps = 16;
constexpr int kTailThreads = kTailWarps * kGemvLanes;

struct TailParams {
  int hidden, attn_width, inter, qkv_width;
  const float* attn;
  const uint4* o;
  const float* o_bias;
  float* x;
  NormParams post_norm;
  const uint4* gate_up;
  const float* gate_up_bias;
  float* act;
  const uint4* down;
  const float* down_bias;
  NormParams next_norm;  // weight null: the last layer, no qkv phase
  const uint4* qkv;
  const float* qkv_bias;
  float* qkv_out;
  unsigned* barrier;  // [arrived, generation, row counters of phases 1..4], counters zero between uses
};

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void store_release(unsigned* p, unsigned v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// Every block of the grid (all resident: a cooperative launch) waits here until all have
// arrived; what any thread wrote before is visible to every thread after. The last block to
// arrive resets the count and opens the next generation, so the words are ready for the next
// barrier and the next launch (graph replays included) without a reset of their own.
// `finished`: the row counter of the phase every block has now finished, reset by the last one.
__device__ void grid_barrier(unsigned* barrier, unsigned* finished) {
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned* arrived = barrier;
    unsigned* generation = barrier + 1;
    const unsigned current = load_acquire(generation);
    __threadfence();
    if (atomicAdd(arrived, 1u) == gridDim.x - 1) {
      *arrived = 0;
      *finished = 0;
      __threadfence();
      store_release(generation, current + 1);
    } else {
      while (load_acquire(generation) == current) {
      }
    }
    __threadfence();
  }
  __syncthreads();
}

// rows x width floats (width % 4 == 0) from global memory into the block's shared copy, through
// L2: another SM may have written them in this launch.
template <int M>
__device__ __forceinline__ void stage_rows(const float* src, int width, float4* staged) {
  const float4* s4 = reinterpret_cast<const float4*>(src);
  for (int i = static_cast<int>(threadIdx.x); i < M * width / 4; i += kTailThreads) staged[i] = __ldcg(s4 + i);
  __syncthreads();
}

// The first weights this warp will read in a phase, requested into L2.
template <int R, int U, bool Gated>
__device__ __forceinline__ void prefetch_phase(const uint4* w, int n, int k, int warp, int lane) {
  const int row0 = warp * gemv_warp_outputs<R, Gated>();
  if (row0 >= n) return;
  const uint4* rows[R];
  gemv_warp_rows<R, Gated>(w, row0, n, k / 8, rows);
  gemv_warp_prefetch<R, U>(rows, k / 8, lane);
}

// One GEMV over the grid: warp `warp` of `warps` takes row group `warp` first, then whichever
// group a shared counter hands it next (requested before the current group's loads, so the
// answer is there when they are done): SMs that stream faster take more rows, as the blocks of a
// GEMV kernel spread themselves. The activations come from the block's shared copy.
template <int M, int R, int U, bool Gated, bool AddOut>
__device__ __forceinline__ void gemv_phase(const float4* x4, const uint4* w, const float* bias, float* y, int n,
                                           int k, int warp, int warps, int lane, unsigned* next_group) {
  constexpr int kOutputs = gemv_warp_outputs<R, Gated>();
  const int groups = (n + kOutputs - 1) / kOutputs;
  const int vecs = k / 8;
  for (int group = warp; group < groups;) {
    unsigned ticket = 0;
    if (lane == 0) ticket = atomicAdd(next_group, 1u);
    const int row0 = group * kOutputs;
    const uint4* rows[R];
    gemv_warp_rows<R, Gated>(w, row0, n, vecs, rows);
    float acc[M][R];
    gemv_warp_dot<M, R, U, true>(rows, vecs, x4, k / 4, lane, acc);
    gemv_warp_store<M, R, Gated, AddOut>(acc, bias, y, row0, n, lane);
    group = warps + static_cast<int>(__shfl_sync(0xffffffffu, ticket, 0));
  }
}

// U: 16-byte loads in flight per lane and row of the plain GEMVs (gate | up: two rows, U / 2 each).
template <int M, int U>
__global__ void __launch_bounds__(kTailThreads) layer_tail_kernel(TailParams p) {
  extern __shared__ float4 staged[];
  __shared__ float scratch[kMaxRmsThreads / 32];
  const int lane = static_cast<int>(threadIdx.x) % kGemvLanes;
  const int warp = static_cast<int>(blockIdx.x) * kTailWarps + static_cast<int>(threadIdx.x) / kGemvLanes;
  const int warps = static_cast<int>(gridDim.x) * kTailWarps;

  unsigned* counter = p.barrier + 2;  // phase i's rows: counter[i]
  prefetch_phase<1, U, false>(p.o, p.hidden, p.attn_width, warp, lane);
  wait_for_prior_kernels();
  stage_rows<M>(p.attn, p.attn_width, staged);
  gemv_phase<M, 1, U, false, true>(staged, p.o, p.o_bias, p.x, p.hidden, p.attn_width, warp, warps, lane, counter);
  prefetch_phase<2, U / 2, true>(p.gate_up, p.inter, p.hidden, warp, lane);
  // The last phase's counter (the previous launch's) is reset here, the others at the barrier
  // after their phase.
  grid_barrier(p.barrier, counter);
  if (blockIdx.x == 0 && threadIdx.x == 0) counter[3] = 0;

  stage_normed_rows<M, kTailWarps>(p.x, p.post_norm, p.hidden, staged, scratch);
  gemv_phase<M, 2, U / 2, true, false>(staged, p.gate_up, p.gate_up_bias, p.act, p.inter, p.hidden, warp, warps,
                                       lane, counter + 1);
  prefetch_phase<1, U, false>(p.down, p.hidden, p.inter, warp, lane);
  grid_barrier(p.barrier, counter + 1);

  stage_rows<M>(p.act, p.inter, staged);
  gemv_phase<M, 1, U, false, true>(staged, p.down, p.down_bias, p.x, p.hidden, p.inter, warp, warps, lane,
                                   counter + 2);
  if (p.next_norm.weight == nullptr) {
    grid_barrier(p.barrier, counter + 2);
    return;
  }
  prefetch_phase<1, U, false>(p.qkv, p.qkv_width, p.hidden, warp, lane);
  grid_barrier(p.barrier, counter + 2);

  stage_normed_rows<M, kTailWarps>(p.x, p.next_norm, p.hidden, staged, scratch);
  gemv_phase<M, 1, U, false, false>(staged, p.qkv, p.qkv_bias, p.qkv_out, p.qkv_width, p.hidden, warp, warps, lane,
                                    counter + 3);
}

using TailKernel = void (*)(TailParams);

// The kernel for M rows with loads_in_flight (4 or 8) loads per lane and row.
TailKernel tail_kernel(int m, int loads_in_flight) {
  if (m == 1) return loads_in_flight == 4 ? layer_tail_kernel<1, 4> : layer_tail_kernel<1, 8>;
  return loads_in_flight == 4 ? layer_tail_kernel<2, 4> : layer_tail_kernel<2, 8>;
}

size_t staged_bytes(const LayerTailArgs& a) {
  return static_cast<size_t>(a.rows) * std::max({a.attn_width, a.hidden, a.inter}) * sizeof(float);
}

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

int optin_shared_memory() {
  int device = 0, optin = 0;
  MOXIN_CUDA_CHECK(cudaGetDevice(&device));
  MOXIN_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return optin;
}

// Blocks per SM the grid asks for: MOXIN_CUDA_TAIL_BLOCKS (for sweeps), else 1; at most what fits.
// Known per kernel and shared memory size after the first query (a decode step asks 36 times).
int blocks_per_sm(TailKernel kernel, size_t smem) {
  struct Known {
    TailKernel kernel;
    size_t smem;
    int blocks;
  };
  static thread_local std::vector<Known> known;
  for (const Known& k : known)
    if (k.kernel == kernel && k.smem == smem) return k.blocks;
  MOXIN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        optin_shared_memory() - static_cast<int>(kMaxRmsThreads / 32 * sizeof(float))));
  int resident = 0;
  MOXIN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, kTailThreads, smem));
  static const int wanted = std::max(1, env_int("MOXIN_CUDA_TAIL_BLOCKS", 1));
  known.push_back({kernel, smem, std::min(resident, wanted)});
  return known.back().blocks;
}

int loads_in_flight() {
  static const int loads = env_int("MOXIN_CUDA_TAIL_LOADS", 8) == 4 ? 4 : 8;
  return loads;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

bool layer_tail_usable(const LayerTailArgs& a) {
  if (a.rows < 1 || a.rows > kLayerTailMaxRows) return false;
  for (const int width : {a.hidden, a.attn_width, a.inter})
    if (width <= 0 || width % 8 != 0) return false;
  const bool next = a.next_norm != nullptr;
  if (next && (a.qkv_width <= 0 || a.qkv == nullptr || a.qkv_out == nullptr)) return false;
  for (const void* p : {static_cast<const void*>(a.attn), static_cast<const void*>(a.o), static_cast<const void*>(a.x),
                        static_cast<const void*>(a.post_norm), static_cast<const void*>(a.gate_up),
                        static_cast<const void*>(a.act), static_cast<const void*>(a.down)})
    if (p == nullptr || !aligned16(p)) return false;
  if (next && (!aligned16(a.next_norm) || !aligned16(a.qkv))) return false;
  const size_t smem = staged_bytes(a);
  return smem <= static_cast<size_t>(optin_shared_memory()) - kMaxRmsThreads / 32 * sizeof(float) &&
         blocks_per_sm(tail_kernel(a.rows, loads_in_flight()), smem) >= 1;
}

void layer_tail(const LayerTailArgs& a, unsigned* barrier, cudaStream_t stream) {
  const auto norm = [&](const float* weight) {
    return NormParams{weight, a.eps, rms_threads(a.hidden, true)};
  };
  const TailParams p{a.hidden,
                     a.attn_width,
                     a.inter,
                     a.qkv_width,
                     a.attn,
                     reinterpret_cast<const uint4*>(a.o),
                     a.o_bias,
                     a.x,
                     norm(a.post_norm),
                     reinterpret_cast<const uint4*>(a.gate_up),
                     a.gate_up_bias,
                     a.act,
                     reinterpret_cast<const uint4*>(a.down),
                     a.down_bias,
                     norm(a.next_norm),
                     reinterpret_cast<const uint4*>(a.qkv),
                     a.qkv_bias,
                     a.qkv_out,
                     barrier};
  const TailKernel kernel = tail_kernel(a.rows, loads_in_flight());
  const size_t smem = staged_bytes(a);
  const int blocks = multiprocessors() * blocks_per_sm(kernel, smem);
  launch_kernel_options("layer_tail_kernel", kernel, blocks, kTailThreads, smem, stream,
                        LaunchOptions{1u, false, true}, p);
}

}  // namespace moxin::cuda
