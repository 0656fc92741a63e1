// Loads of data a kernel reads once per call (weight matrices, quantized codes): ld.global.nc
// with L1::no_allocate keeps them out of L1, so the activations that every warp re-reads stay
// cached there. Pointers must be aligned to the load's width; they keep their element type
// (a cast to void* changed the address arithmetic nvcc emits around the loads).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moxin::cuda {

template <class T>
__device__ __forceinline__ uint4 load_once_16(const T* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

template <class T>
__device__ __forceinline__ uint2 load_once_8(const T* p) {
  uint2 v;
  asm("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}

template <class T>
__device__ __forceinline__ uint32_t load_once_4(const T* p) {
  uint32_t v;
  asm("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}

}  // namespace moxin::cuda
