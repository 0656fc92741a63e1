// ThreadPool: every index runs exactly once, splits respect their bounds, nested loops run
// inline, exceptions reach the caller, and the pool survives many back-to-back loops.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "core/thread_pool.hpp"

namespace moxin {
namespace {

TEST(ThreadPool, CoversEveryIndexOnce) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int64_t n : {0, 1, 2, 3, 7, 64, 1001}) {
      for (int64_t min_chunk : {1, 4, 100}) {
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        std::atomic<int> ranges{0};
        pool.parallel_for(n, [&](int64_t b, int64_t e) {
          EXPECT_LE(0, b);
          EXPECT_LT(b, e);
          EXPECT_LE(e, n);
          if (e - b < min_chunk) {
            EXPECT_EQ(e, n) << "only the last range may be short";
          }
          ranges++;
          for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
        }, min_chunk);
        for (int64_t i = 0; i < n; ++i) EXPECT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "n=" << n << " i=" << i;
        EXPECT_LE(ranges.load(), threads);
      }
    }
  }
}

TEST(ThreadPool, DynamicChunksHaveTheRequestedSize) {
  ThreadPool pool(2);
  std::mutex mutex;
  std::set<std::pair<int64_t, int64_t>> seen;
  pool.parallel_for_dynamic(103, 10, [&](int64_t b, int64_t e) {
    std::lock_guard<std::mutex> lock(mutex);
    seen.insert({b, e});
  });
  ASSERT_EQ(seen.size(), 11u);
  int64_t expect = 0;
  for (const auto& [b, e] : seen) {
    EXPECT_EQ(b, expect);
    EXPECT_EQ(e, std::min<int64_t>(b + 10, 103));
    expect = e;
  }
}

TEST(ThreadPool, UsesSeveralThreadsAndRunsNestedLoopsInline) {
  ThreadPool pool(2);
  std::mutex mutex;
  std::set<std::thread::id> ids;
  std::atomic<int64_t> inner{0};
  pool.parallel_for(2, [&](int64_t, int64_t) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      ids.insert(std::this_thread::get_id());
    }
    // Blocks until both ranges have started, so both threads must take part.
    static std::atomic<int> arrived{0};
    arrived++;
    while (arrived.load() < 2) std::this_thread::yield();
    pool.parallel_for(10, [&](int64_t b, int64_t e) { inner += e - b; });
  });
  EXPECT_EQ(ids.size(), 2u);
  EXPECT_EQ(inner.load(), 20);
}

TEST(ThreadPool, RethrowsExceptionsAfterAllRangesFinish) {
  ThreadPool pool(2);
  std::atomic<int> done{0};
  EXPECT_THROW(pool.parallel_for(2, [&](int64_t b, int64_t) {
                 done++;
                 if (b == 0) throw std::runtime_error("boom");
               }),
               std::runtime_error);
  EXPECT_EQ(done.load(), 2);
  // Still usable afterwards.
  std::atomic<int64_t> sum{0};
  pool.parallel_for(100, [&](int64_t b, int64_t e) { sum += e - b; });
  EXPECT_EQ(sum.load(), 100);
}

TEST(ThreadPool, ManySmallLoopsBackToBack) {
  ThreadPool pool(2);
  int64_t total = 0;
  std::vector<int64_t> partial(2);
  for (int i = 0; i < 20000; ++i) {
    partial[0] = partial[1] = 0;
    pool.parallel_for(2, [&](int64_t b, int64_t e) { partial[static_cast<size_t>(b)] = e - b + i % 3; });
    total += partial[0] + partial[1];
  }
  int64_t expect = 0;
  for (int i = 0; i < 20000; ++i) expect += 2 + 2 * (i % 3);
  EXPECT_EQ(total, expect);
}

// Loops of different sizes back to back, from several submitting threads at once (the server's
// HTTP workers resize images through one shared pool): a worker still leaving one loop must not
// take a chunk of the next. It once could - its stale claim checked against the next loop's
// larger chunk count - running a chunk twice and counting one chunk too many, so the submitter
// waited forever (a server request hung in CI).
TEST(ThreadPool, LoopsOfDifferentSizesFromSeveralThreads) {
  ThreadPool pool(4);
  std::atomic<int64_t> wrong{0};
  auto submit = [&](int seed) {
    for (int i = 0; i < 20000; ++i) {
      const int64_t n = (i + seed) % 3 == 0 ? 2 : 4 + (i + seed) % 7;
      std::vector<std::atomic<int>> runs(static_cast<size_t>(n));
      pool.parallel_for(n, [&](int64_t b, int64_t e) {
        for (int64_t j = b; j < e; ++j) runs[static_cast<size_t>(j)].fetch_add(1);
      });
      for (const auto& r : runs) wrong += r.load() != 1;
    }
  };
  std::vector<std::thread> submitters;
  for (int t = 0; t < 3; ++t) submitters.emplace_back(submit, t);
  for (std::thread& t : submitters) t.join();
  EXPECT_EQ(wrong.load(), 0) << "indices run other than exactly once";
}

TEST(ThreadPool, ZeroMeansHardwareConcurrency) {
  ThreadPool pool(0);
  EXPECT_EQ(pool.size(), static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
}

}  // namespace
}  // namespace moxin
