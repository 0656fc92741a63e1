// The CPU's memory-bandwidth ceiling for benchmark reports: every pool thread streams its
// share of a buffer far larger than the last-level cache, as decode streams the weights.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <vector>

#include "backend/cpu/cpu_backend_impl.hpp"
#include "core/check.hpp"
#include "core/large_buffer.hpp"

namespace moxin::cpu {

double CpuBackend::measure_bandwidth_gbps(size_t bytes, int passes) {
  MOXIN_CHECK(bytes >= (size_t{64} << 20) && passes >= 1, "[cpu] measure_bandwidth_gbps: ", bytes,
              " bytes (at least 64 MiB, beyond the caches), ", passes, " passes (at least 1)");
  const size_t kBytes = bytes / 64 * 64;
  const auto n = static_cast<int64_t>(kBytes / sizeof(uint64_t));
  // On huge pages, as the weights quantized at load and the KV cache are: the ceiling is the
  // fastest read this machine gives (a file-mapped bf16 checkpoint gets huge pages only where
  // the page cache holds 2 MB folios, and is measured against this).
  LargeVector<uint64_t> buffer(static_cast<size_t>(n));
  // Distinct non-zero contents, written by the threads that will read them.
  pool_.parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) buffer[static_cast<size_t>(i)] = static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ull;
  });
  std::atomic<uint64_t> checksum{0};  // an atomic sink, so the reads cannot be optimized away
  std::vector<double> rates;
  for (int pass = 0; pass < passes; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    // In whole cache lines, with the kernels' fastest read (the GEMV's access pattern).
    const auto* bytes = reinterpret_cast<const uint8_t*>(buffer.data());
    pool_.parallel_for(static_cast<int64_t>(kBytes / 64), [&](int64_t b, int64_t e) {
      checksum.fetch_xor(kernels_.read_stream(bytes + b * 64, (e - b) * 64), std::memory_order_relaxed);
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    rates.push_back(static_cast<double>(kBytes) / s / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

}  // namespace moxin::cpu
