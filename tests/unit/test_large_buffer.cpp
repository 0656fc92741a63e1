// allocate_large: zero-filled, aligned, writable buffers of every size; from one huge page up,
// huge-page aligned and, wherever a directly advised mapping is, eligible for huge pages.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/large_buffer.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace moxin {
namespace {

#if defined(__linux__)
// The "THPeligible" line of the mapping that holds p in /proc/self/smaps (-1 if not found).
int thp_eligible(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  const auto address = reinterpret_cast<uintptr_t>(p);
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    uintptr_t lo = 0, hi = 0;
    char dash = 0;
    std::istringstream header(line);
    if (header >> std::hex >> lo >> dash >> hi && dash == '-') {
      inside = lo <= address && address < hi;
      continue;
    }
    if (inside && line.rfind("THPeligible:", 0) == 0) return std::stoi(line.substr(12));
  }
  return -1;
}

// The kernel's THP mode, the bracketed word of .../enabled ("" without THP).
std::string thp_mode() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto open = text.find('['), close = text.find(']');
  return open == std::string::npos || close == std::string::npos ? "" : text.substr(open + 1, close - open - 1);
}
#endif

TEST(LargeBuffer, EverySizeIsZeroedAlignedAndWritable) {
  const size_t huge = huge_page_size();
  std::vector<size_t> sizes = {0, 1, 63, 64, 4095, 4097, 1 << 20};
  if (huge != 0) sizes.insert(sizes.end(), {huge - 1, huge, huge + 1, 3 * huge + 4096 + 7});
  const unsigned seed = std::random_device{}();
  std::printf("seed %u\n", seed);
  std::mt19937 rng(seed);
  for (size_t bytes : sizes) {
    SCOPED_TRACE(bytes);
    auto* p = static_cast<uint8_t*>(allocate_large(bytes));
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
    if (huge != 0 && bytes >= huge) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % huge, 0u);
    }
    size_t nonzero = 0;
    for (size_t i = 0; i < bytes; ++i) nonzero += p[i] != 0;
    EXPECT_EQ(nonzero, 0u);
    // Every byte writable and kept (the last one too: the mapping's tail was trimmed).
    std::vector<uint8_t> pattern(bytes);
    for (auto& b : pattern) b = static_cast<uint8_t>(rng());
    if (bytes > 0) {  // an empty vector's data() may be null, which memcpy/memcmp must not get
      std::memcpy(p, pattern.data(), bytes);
      EXPECT_EQ(std::memcmp(p, pattern.data(), bytes), 0);
    }
    free_large(p, bytes);
  }
  free_large(nullptr, 123);
}

#if defined(__linux__)
TEST(LargeBuffer, HugeBuffersAreEligibleForHugePagesWhereTheProcessCanHaveThem) {
  const size_t huge = huge_page_size();
  if (huge == 0) GTEST_SKIP() << "this kernel has no transparent huge pages";
  const size_t bytes = 2 * huge;
  // The control: a mapping advised directly. Where even it is not eligible (THP mode "never", a
  // process under PR_SET_THP_DISABLE, or qemu-user, which drops the advice) there is nothing to
  // compare against.
  void* raw = mmap(nullptr, bytes + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(raw, MAP_FAILED);
  void* control = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(raw) + huge - 1) / huge * huge);
  ASSERT_EQ(madvise(control, bytes, MADV_HUGEPAGE), 0);
  std::memset(control, 1, bytes);
  const int control_eligible = thp_eligible(control);
  munmap(raw, bytes + huge);
  if (control_eligible != 1)
    GTEST_SKIP() << "this process cannot have huge pages (THP mode '" << thp_mode()
                 << "', an advised mapping's THPeligible " << control_eligible << ")";
  void* p = allocate_large(bytes);
  ASSERT_NE(p, nullptr);
  std::memset(p, 1, bytes);
  EXPECT_EQ(thp_eligible(p), 1) << "THP mode " << thp_mode();
  free_large(p, bytes);
}
#endif

TEST(LargeBuffer, VectorsGrowAndKeepTheirContents) {
  LargeVector<uint32_t> v;
  for (uint32_t i = 0; i < (3u << 20); ++i) v.push_back(i * 2654435761u);
  for (uint32_t i = 0; i < (3u << 20); i += 4099) ASSERT_EQ(v[i], i * 2654435761u);
  v.resize(5);
  v.shrink_to_fit();
  EXPECT_EQ(v[4], 4u * 2654435761u);
}

}  // namespace
}  // namespace moxin
