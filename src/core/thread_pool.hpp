// A pool of persistent worker threads for data-parallel loops. The calling thread takes part
// in every loop, so a pool of N threads runs N-1 workers. Workers spin briefly between loops
// before sleeping: a decode step issues hundreds of small ops back to back, and waking a
// sleeping thread (a futex round trip) costs more than most of them.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace moxin {

class ThreadPool {
 public:
  // threads <= 0: one per hardware thread.
  explicit ThreadPool(int threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  using RangeFn = std::function<void(int64_t begin, int64_t end)>;

  // Splits [0, n) into at most size() contiguous ranges of at least `min_chunk` items and
  // runs fn on each, in parallel. The split depends only on n, min_chunk and size(). Runs
  // inline when one range suffices or when called from inside a loop of this pool.
  // An exception thrown by fn is rethrown here once every range has finished.
  void parallel_for(int64_t n, const RangeFn& fn, int64_t min_chunk = 1);

  // Splits [0, n) into ranges of `chunk` items (the last may be shorter) that the threads
  // claim one at a time: for work whose cost varies from item to item.
  void parallel_for_dynamic(int64_t n, int64_t chunk, const RangeFn& fn);

 private:
  void run(int64_t n, int64_t chunk, const RangeFn& fn);
  void run_chunks(uint32_t generation);
  void worker_loop(uint32_t seen);

  std::vector<std::thread> workers_;
  std::mutex submit_mutex_;  // one loop at a time when several threads share the pool

  // The current loop. A thread claims chunk i by moving claim_ from (generation, i) to
  // (generation, i + 1); the generation in the same word stops a worker that wakes late from
  // taking a chunk of a loop that is not the one it was woken for.
  std::atomic<uint64_t> claim_{0};
  std::atomic<int64_t> num_chunks_{0};
  std::atomic<int64_t> done_chunks_{0};
  const RangeFn* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t chunk_ = 0;
  std::mutex error_mutex_;
  std::exception_ptr error_;

  // Sleeping, after the spin: workers until generation_ moves, the caller until all chunks are
  // done. A sleeper registers in sleepers_ before its last look at the condition, and a waker
  // reads sleepers_ after changing it, so one of the two always sees the other.
  std::atomic<uint32_t> generation_{0};
  std::atomic<bool> stop_{false};
  std::atomic<int> sleepers_{0};
  std::mutex sleep_mutex_;
  std::condition_variable wake_;
  void wake_sleepers();
};

}  // namespace moxin
