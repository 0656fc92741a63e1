// Asynchronous global -> shared copies (cp.async, sm_80+) for the kernels that stage K/V tiles:
// the 16-byte copy (optionally zero-filled), the commit of a thread's copies as one group, and
// the wait until at most N groups are still in flight.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moxin::cuda {

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void copy16_async(void* smem, const void* global) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_address(smem)), "l"(global)
               : "memory");
}

// 16 bytes, or 16 zero bytes where `valid` is false (src-size 0 reads nothing).
__device__ __forceinline__ void copy16_or_zero(void* smem, const void* global, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_address(smem)),
               "l"(global), "r"(valid ? 16 : 0)
               : "memory");
}

// The copies this thread issued since the last commit become one group.
__device__ __forceinline__ void copies_issued() { asm volatile("cp.async.commit_group;" ::: "memory"); }

// Waits until at most kPending of this thread's groups are still in flight.
template <int kPending>
__device__ __forceinline__ void wait_staged() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
}

}  // namespace moxin::cuda
