// Large, long-lived host buffers (weights quantized at load, the CPU KV cache, the bandwidth
// ceiling's buffer) on transparent huge pages where the OS offers them.
//
// Why: decode streams every weight once per token, and on 4 KB pages each 4 KB of a stream is a
// TLB miss; in a virtual machine each miss is a two-level page walk. On the 2-core Zen 4 VM of
// docs/cpu-notes.md a 1 GB read ran at 22-25 GB/s on one core from 4 KB pages and 34 GB/s from
// 2 MB pages (two cores: 30-33 against 35-36), and quantized decode took 5-16% less time per
// step at two threads (bench/results/cpu-2core-2026-12-05-session10-huge-pages.txt).
// Linux's default THP mode is "madvise", so plain malloc'ed memory never gets huge pages: the
// buffer has to be huge-page aligned and advised.
//
// Buffers of at least one huge page are mapped anonymously at a huge-page boundary and advised
// MADV_HUGEPAGE; smaller ones come from the heap. Either way the memory reads as zeros and is
// committed on first touch (an untouched KV cache block costs nothing; a touched one commits a
// whole huge page where the OS gave one).
#pragma once

#include <cstddef>
#include <new>
#include <vector>

namespace moxin {

// The size from which buffers are huge-page backed (the OS's PMD-sized huge page, 2 MB on
// x86-64 and on 4 KB-page ARM64; 0 where there is none).
size_t huge_page_size();

// `bytes` zero-filled bytes, aligned to at least 64; nullptr when the memory is not there.
void* allocate_large(size_t bytes) noexcept;
// Frees what allocate_large(bytes) returned (null is ignored).
void free_large(void* p, size_t bytes) noexcept;

// std::vector storage through allocate_large.
template <class T>
struct LargeAllocator {
  using value_type = T;
  LargeAllocator() = default;
  template <class U>
  LargeAllocator(const LargeAllocator<U>&) noexcept {}
  T* allocate(size_t n) {
    if (n > static_cast<size_t>(-1) / sizeof(T)) throw std::bad_array_new_length();
    void* p = allocate_large(n * sizeof(T));
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t n) noexcept { free_large(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const LargeAllocator<U>&) const noexcept {
    return true;
  }
};

template <class T>
using LargeVector = std::vector<T, LargeAllocator<T>>;

}  // namespace moxin
