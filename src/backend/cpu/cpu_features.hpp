// CPU feature checks that __builtin_cpu_supports cannot make on every compiler: clang 14 does
// not know "f16c" there, so F16C is read from CPUID directly.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

namespace moxin::cpu {

// The CPU converts f16 <-> f32 in vector registers (vcvtph2ps). Call it together with an AVX
// check (__builtin_cpu_supports("avx2") and the like also ask whether the OS saves ymm state).
inline bool cpu_has_f16c() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
#else
  return false;
#endif
}

// The instruction set every AVX2 kernel file is compiled for: AVX2 + FMA + F16C.
inline bool cpu_has_avx2_fma_f16c() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool supported =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
  return supported;
#else
  return false;
#endif
}

// The CPU has AVX-VNNI (CPUID leaf 7 subleaf 1, EAX bit 4): the VEX-encoded 256-bit vpdpbusd
// and vpdpwssd. GCC 12's __builtin_cpu_supports does not detect it. Call it with an AVX2 check
// (which also asks whether the OS saves ymm state).
inline bool cpu_has_avx_vnni() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) != 0 && (eax & (1u << 4)) != 0;
#else
  return false;
#endif
}

}  // namespace moxin::cpu
