// MappedFile's page release: dropping a tensor's pages from the resident set must leave its
// bytes readable and unchanged (they fault back in from the file), shrink the mapping's
// resident size, and ignore ranges that are not in the mapping.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "io/mapped_file.hpp"

namespace moxin {
namespace {

// Resident kB of the mapping starting at `start`, from /proc/self/smaps.
long resident_kb(const void* start) {
  std::ifstream smaps("/proc/self/smaps");
  char header[32];
  std::snprintf(header, sizeof header, "%lx-", reinterpret_cast<unsigned long>(start));
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    if (line.rfind(header, 0) == 0) inside = true;
    else if (inside && line.rfind("Rss:", 0) == 0) return std::stol(line.substr(4));
  }
  return -1;
}

TEST(MappedFile, ReleasingARangeKeepsItsBytes) {
  const unsigned seed = std::random_device{}();
  std::printf("seed %u\n", seed);
  std::mt19937 rng(seed);
  const long page = sysconf(_SC_PAGESIZE);
  std::vector<char> bytes(static_cast<size_t>(page) * 64 + 123);
  for (char& b : bytes) b = static_cast<char>(rng());
  const auto path = std::filesystem::temp_directory_path() / ("moxin_mapped_" + std::to_string(seed));
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  {
    MappedFile file(path.string());
    volatile long sum = 0;
    for (size_t i = 0; i < file.size(); i += 512) sum = sum + file.data()[i];  // fault every page in
    const long before = resident_kb(file.data());
    ASSERT_GE(before, 64 * page / 1024);

    const size_t offset = 100 + rng() % 1000, length = static_cast<size_t>(page) * 40;
    EXPECT_TRUE(file.release_resident_pages(file.data() + offset, length));
    const long after = resident_kb(file.data());
    EXPECT_LE(after, before - 38 * page / 1024) << "the whole pages inside the range should have gone";
    EXPECT_EQ(0, std::memcmp(file.data(), bytes.data(), bytes.size())) << "released bytes must read back unchanged";

    EXPECT_FALSE(file.release_resident_pages(bytes.data(), 100));  // not in this mapping
    EXPECT_FALSE(file.release_resident_pages(file.data() + file.size() - 10, 20));  // runs past its end
  }
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace moxin
