#include "core/thread_pool.hpp"

#include <algorithm>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace moxin {
namespace {

// Set while a thread runs a chunk, so a nested loop runs inline instead of deadlocking.
thread_local bool t_inside_loop = false;

// About 100-200 microseconds of polling before a thread sleeps.
constexpr int kSpinIterations = 4000;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

constexpr uint64_t pack_claim(uint32_t generation, uint32_t chunk) {
  return (static_cast<uint64_t>(generation) << 32) | chunk;
}

}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  workers_.reserve(static_cast<size_t>(threads - 1));
  // Workers start from generation 0, not from whatever they would read once running: a
  // thread scheduled late must still see the loops (and the stop) that came before it.
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(0); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  generation_.fetch_add(1);
  wake_sleepers();
  for (std::thread& w : workers_) w.join();
}

void ThreadPool::wake_sleepers() {
  if (sleepers_.load() == 0) return;
  { std::lock_guard<std::mutex> lock(sleep_mutex_); }  // a registered sleeper is now waiting
  wake_.notify_all();
}

void ThreadPool::parallel_for(int64_t n, const RangeFn& fn, int64_t min_chunk) {
  if (n <= 0) return;
  const int64_t most_chunks = std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk));
  const int64_t chunks = std::min<int64_t>(size(), most_chunks);
  run(n, (n + chunks - 1) / chunks, fn);
}

void ThreadPool::parallel_for_dynamic(int64_t n, int64_t chunk, const RangeFn& fn) {
  if (n <= 0) return;
  run(n, std::max<int64_t>(1, chunk), fn);
}

void ThreadPool::run(int64_t n, int64_t chunk, const RangeFn& fn) {
  chunk = std::max(chunk, (n + 0x7fffffff - 1) / 0x7fffffff);  // chunk indices fit 32 bits
  const int64_t chunks = (n + chunk - 1) / chunk;
  if (chunks == 1 || workers_.empty() || t_inside_loop) {
    for (int64_t begin = 0; begin < n; begin += chunk) fn(begin, std::min(n, begin + chunk));
    return;
  }
  std::lock_guard<std::mutex> lock(submit_mutex_);
  const uint32_t generation = generation_.load() + 1;
  // The claims move to this loop before any of its fields change: a worker still leaving the
  // last loop, holding a claim index past that loop's end, then fails its claim and leaves. The
  // other order let it check that index against this loop's (larger) chunk count and take a
  // chunk of this loop, running it twice (or the last loop's fn) and counting one chunk too many,
  // so that the submitter waited forever. All of it sequentially consistent (run_chunks too).
  claim_.store(pack_claim(generation, 0));
  fn_ = &fn;
  n_ = n;
  chunk_ = chunk;
  error_ = nullptr;
  done_chunks_.store(0);
  num_chunks_.store(chunks);
  generation_.store(generation);
  wake_sleepers();

  run_chunks(generation);

  const auto all_done = [&] { return done_chunks_.load() == chunks; };
  for (int spin = 0; spin < kSpinIterations && !all_done(); ++spin) cpu_relax();
  if (!all_done()) {
    std::unique_lock<std::mutex> lock(sleep_mutex_);
    sleepers_.fetch_add(1);
    wake_.wait(lock, all_done);
    sleepers_.fetch_sub(1);
  }
  if (error_) std::rethrow_exception(error_);
}

void ThreadPool::run_chunks(uint32_t generation) {
  t_inside_loop = true;
  for (;;) {
    uint64_t claim = claim_.load();
    for (;;) {
      if (claim >> 32 != generation) {
        t_inside_loop = false;
        return;
      }
      if (static_cast<int64_t>(claim & 0xffffffffu) >= num_chunks_.load()) {
        t_inside_loop = false;
        return;
      }
      if (claim_.compare_exchange_weak(claim, claim + 1)) break;
    }
    // Holding a chunk of this generation: the loop's fields stay put until it is counted done.
    const int64_t begin = static_cast<int64_t>(claim & 0xffffffffu) * chunk_;
    try {
      (*fn_)(begin, std::min(n_, begin + chunk_));
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex_);
      if (!error_) error_ = std::current_exception();
    }
    const int64_t done = done_chunks_.fetch_add(1) + 1;
    if (done == num_chunks_.load()) wake_sleepers();
  }
}

void ThreadPool::worker_loop(uint32_t seen) {
  for (;;) {
    uint32_t current = seen;
    for (int spin = 0; spin < kSpinIterations && current == seen; ++spin) {
      cpu_relax();
      current = generation_.load(std::memory_order_acquire);
    }
    if (current == seen) {
      std::unique_lock<std::mutex> lock(sleep_mutex_);
      sleepers_.fetch_add(1);
      wake_.wait(lock, [&] { return generation_.load() != seen; });
      sleepers_.fetch_sub(1);
      continue;
    }
    seen = current;
    if (stop_.load(std::memory_order_acquire)) return;
    run_chunks(seen);
  }
}

}  // namespace moxin
