// The CPU's memory-bandwidth ceiling for benchmark reports: every pool thread streams its
// share of a buffer far larger than the last-level cache, as decode streams the weights.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <vector>

#include "backend/cpu/cpu_backend_impl.hpp"

namespace moxin::cpu {

double CpuBackend::measure_bandwidth_gbps() {
  constexpr size_t kBytes = size_t{1} << 30;
  const auto n = static_cast<int64_t>(kBytes / sizeof(uint64_t));
  std::vector<uint64_t> buffer(static_cast<size_t>(n));
  // Distinct non-zero contents, written by the threads that will read them.
  pool_.parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) buffer[static_cast<size_t>(i)] = static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ull;
  });
  std::atomic<uint64_t> checksum{0};  // an atomic sink, so the reads cannot be optimized away
  std::vector<double> rates;
  for (int rep = 0; rep < 5; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    pool_.parallel_for(n, [&](int64_t b, int64_t e) {
      uint64_t acc[4] = {0, 0, 0, 0};
      int64_t i = b;
      for (; i + 3 < e; i += 4)
        for (int j = 0; j < 4; ++j) acc[j] ^= buffer[static_cast<size_t>(i + j)];
      for (; i < e; ++i) acc[0] ^= buffer[static_cast<size_t>(i)];
      checksum.fetch_xor(acc[0] ^ acc[1] ^ acc[2] ^ acc[3], std::memory_order_relaxed);
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    rates.push_back(static_cast<double>(kBytes) / s / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

}  // namespace moxin::cpu
