// Kernel launch plumbing shared by the .cu files: grid sizing for element-wise loops and one
// launch helper that enables programmatic dependent launch (PDL). With PDL a kernel may start
// while the previous kernel on the stream drains; every kernel therefore begins with
// wait_for_prior_kernels() before it reads what earlier kernels wrote (work that touches only
// constant data - weight prefetches - may come first). Graph capture keeps these edges.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "backend/cuda/cuda_check.hpp"

namespace moxin::cuda {

constexpr int kElementwiseThreads = 256;

// Enough blocks to fill the GPU for a grid-stride loop over `count` items, never zero.
inline unsigned elementwise_blocks(int64_t count) {
  const int64_t wanted = (count + kElementwiseThreads - 1) / kElementwiseThreads;
  return static_cast<unsigned>(std::clamp<int64_t>(wanted, 1, 4096));
}

// Programmatic dependent launch, per launch: a kernel launched with it may start while the
// previous one drains. It pays only where a kernel has work that needs nothing from its
// predecessor (the quantized GEMVs prefetch their codes before waiting: 4-bit g64 batch-1 decode
// 341 vs 313 tok/s on the H200) and cost the bf16 decode graph 6% (180 vs 170 tok/s, same run),
// so by default only launch_kernel_prefetching asks for it. A quantized decoder's graph gained
// from it on every launch (4-bit g64: 341 tok/s vs 324 with the prefetching launches only):
// prefer_pdl_everywhere() switches the default so once quantized weights are loaded. With the
// late trigger (below) PDL everywhere still cost bf16 batch 1 2% (H100, session 27: 166.6 against
// 170.3 tok/s) and tied at batches 8 and 32.
// MOXIN_CUDA_PDL=1 turns it on for every launch, =0 off for all (set_pdl_enabled() likewise, for
// benchmarks); either overrides the default.
bool pdl_for_launch(bool prefetching);
void prefer_pdl_everywhere();
void set_pdl_enabled(bool on);

// The current device's SM count (one device per process, as the backend is used), for grid sizing.
int multiprocessors();

// cluster_x > 1: the grid's x dimension in thread block clusters of that many blocks (blocks of
// a cluster run together and can read each other's shared memory). prefetching: as for
// launch_kernel_prefetching below.
template <class... Params, class... Args>
void launch_kernel_with(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                        size_t smem, cudaStream_t stream, unsigned cluster_x, bool prefetching,
                        Args... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attributes[2]{};
  attributes[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attributes[0].val.programmaticStreamSerializationAllowed = pdl_for_launch(prefetching) ? 1 : 0;
  attributes[1].id = cudaLaunchAttributeClusterDimension;
  attributes[1].val.clusterDim.x = cluster_x;
  attributes[1].val.clusterDim.y = 1;
  attributes[1].val.clusterDim.z = 1;
  config.attrs = attributes;
  config.numAttrs = cluster_x > 1 ? 2 : 1;
  check_cuda(cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...), name, __FILE__,
             __LINE__);
}

template <class... Params, class... Args>
void launch_kernel(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                   cudaStream_t stream, Args... args) {
  launch_kernel_with(name, kernel, grid, block, smem, stream, 1u, false, args...);
}

// For kernels that start on data no earlier kernel writes before wait_for_prior_kernels().
template <class... Params, class... Args>
void launch_kernel_prefetching(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                               size_t smem, cudaStream_t stream, Args... args) {
  launch_kernel_with(name, kernel, grid, block, smem, stream, 1u, true, args...);
}

#ifdef __CUDACC__
// When the next kernel on the stream may launch under PDL: once every block of this one has
// asked (or exited). The streaming kernels ask once their last weight loads are done
// (allow_dependents()), every other kernel at its exit, so the dependent's blocks arrive in this
// kernel's drain. Asked at a kernel's start (before session 27), the dependent's blocks took SM
// slots and prefetched beside it for its whole run: a one-wave grid planned for two blocks per SM
// (quant_mma) then ran a second wave; the 4-bit g64 decode at batch 8 was 9% slower (H100, 1630
// against 1775 tok/s, same call), batches 1 and 32 equal within noise.
__device__ __forceinline__ void allow_dependents() {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

// Waits until every earlier kernel on the stream has finished and its writes are visible. A
// no-op without PDL.
__device__ __forceinline__ void wait_for_prior_kernels() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
#endif

}  // namespace moxin::cuda
