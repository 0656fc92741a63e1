#include "core/large_buffer.hpp"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace moxin {
namespace {

constexpr size_t kHeapAlignment = 64;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

size_t read_huge_page_size() {
#if defined(__linux__)
  // Present whenever the kernel has transparent huge pages, whatever their mode.
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size");
  size_t bytes = 0;
  if (in >> bytes && bytes > 0 && (bytes & (bytes - 1)) == 0) return bytes;
#endif
  return 0;
}

bool huge_page_backed(size_t bytes) {
  const size_t huge = huge_page_size();
  return huge != 0 && bytes >= huge;
}

#if defined(__linux__)
size_t os_page_size() {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return page;
}

// Maps `bytes` (a multiple of the OS page) at a huge-page boundary: a span one huge page
// larger is mapped and its unaligned head and surplus tail are unmapped again.
void* map_huge_aligned(size_t bytes) {
  const size_t huge = huge_page_size();
  const size_t span = bytes + huge - os_page_size();
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = round_up(start, huge);
  if (aligned > start) munmap(raw, aligned - start);
  const size_t tail = start + span - (aligned + bytes);
  if (tail > 0) munmap(reinterpret_cast<void*>(aligned + bytes), tail);
  // Only advice: where THP is off ("never") the buffer simply stays on small pages.
  madvise(reinterpret_cast<void*>(aligned), bytes, MADV_HUGEPAGE);
  return reinterpret_cast<void*>(aligned);
}
#endif

}  // namespace

size_t huge_page_size() {
  static const size_t bytes = read_huge_page_size();
  return bytes;
}

void* allocate_large(size_t bytes) noexcept {
#if defined(__linux__)
  if (huge_page_backed(bytes)) return map_huge_aligned(round_up(bytes, os_page_size()));
#endif
  const size_t rounded = round_up(bytes == 0 ? 1 : bytes, kHeapAlignment);
  void* p = std::aligned_alloc(kHeapAlignment, rounded);
  if (p != nullptr) std::memset(p, 0, rounded);
  return p;
}

void free_large(void* p, size_t bytes) noexcept {
  if (p == nullptr) return;
#if defined(__linux__)
  if (huge_page_backed(bytes)) {
    munmap(p, round_up(bytes, os_page_size()));
    return;
  }
#endif
  std::free(p);
}

}  // namespace moxin
