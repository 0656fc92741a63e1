// Continuous batching. One thread owns the Engine (which is not thread-safe); other threads
// submit requests and read each one's results from its RequestStream.
//
// The scheduler's thread loops over three parts that each have one job:
//   - StepPlanner (step_planner.hpp): the policy, with no engine: admission, the step's
//     chunks within the batch and prefill budgets, preemption, the prefix cache;
//   - StepExecutor (step_executor.hpp): vision for newly admitted images, one Engine step;
//   - StepOutput (step_output.hpp): sampling, text, stop strings and endings through each
//     sequence's SequenceCore, streamed to the client.
// Requests arrive in an inbox (the only state shared with other threads) and move into the
// planner's queue at the start of each iteration.
//
// The host's work on a step's tokens overlaps the next decode step on the device: a step's tokens
// are drawn into the engine's drawn tokens (runtime/token_picker.hpp) and the next step is
// planned and, where it is a decode step, issued with each continuing sequence's input taken
// from there, before the host reads them; then the host reads and streams the previous step's
// tokens while that step runs. A sequence those tokens end (end-of-sequence, a stop string) has
// had one more position computed for nothing; an ending by count is known ahead and planned
// around. A step with prompt chunks is issued after the read (see iterate()). Where the backend
// runs ops as they are issued (the CPU) nothing would overlap, so each step's tokens are read at
// once (SchedulerOptions::issue_ahead forces either order: tests run the overlapped one on the CPU).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "runtime/engine.hpp"
#include "runtime/request_stream.hpp"
#include "runtime/scheduler_request.hpp"
#include "runtime/step_output.hpp"
#include "runtime/step_planner.hpp"
#include "runtime/token_picker.hpp"

namespace moxin {

class KvBlockRefs;
class PrefixCache;
class StepExecutor;
class StepPlanner;
struct ScheduledSequence;

struct SchedulerOptions {
  int max_batch = 32;          // sequences in one step
  int max_queue = 256;         // requests waiting for a slot; more are refused
  int prefill_chunk = 256;     // prompt positions of one sequence per step
  int prefill_budget = 512;    // prompt positions of all sequences per step (at least one chunk)
  size_t image_cache = 64;     // projected images kept
  bool prefix_cache = true;
  // Whether a decode step is issued before the host reads the last step's tokens (see above).
  // Unset: where the backend issues ops asynchronously (a GPU).
  std::optional<bool> issue_ahead;
};

struct SchedulerStats {
  int queued = 0;
  int running = 0;
  int free_blocks = 0;
  int cached_blocks = 0;
  uint64_t steps = 0;
  uint64_t prefix_hit_blocks = 0;
  uint64_t image_cache_hits = 0;
  uint64_t images_encoded = 0;
  uint64_t preemptions = 0;
};

class Scheduler {
 public:
  Scheduler(Engine& engine, const SchedulerOptions& options, SchedulerObserver* observer = nullptr);
  ~Scheduler();  // stops at once: requests still queued or running end with an error
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // The most positions one sequence may use (prompt with image tokens + generated tokens).
  int max_sequence_positions() const { return max_positions_; }
  int image_tokens() const { return image_tokens_; }

  // Queues a request; nullptr when the queue is full or the scheduler is draining. Throws
  // moxin::Error for a request that could never run (too long, bad parameters).
  std::shared_ptr<RequestStream> submit(GenerationRequest request);
  // Stops taking requests; queued and running ones still finish.
  void drain();
  // After drain(): waits until the last request has finished.
  void wait();
  SchedulerStats stats() const;

 private:
  void loop();
  bool wait_for_work();
  void take_arrivals();  // with mutex_ held
  void iterate();
  // Draws the next token of each chunk's sequence whose inputs are all computed; they stay in
  // flight until deliver_drawn() (the next iteration, while its step runs).
  void draw(const std::vector<StepPlan::Chunk>& chunks, const Tensor& logits);
  // Reads the tokens in flight and streams them (each sequence's rules applied).
  void deliver_drawn();
  // Forgets them unread (shutdown, an internal error): their sequences end anyway.
  void abandon_drawn();
  void fail_running(const std::string& message);
  void publish_stats();

  Engine& engine_;
  SchedulerOptions options_;
  bool issue_ahead_;  // a step is issued before the previous one's tokens are read
  int max_positions_;
  int image_tokens_;
  std::unique_ptr<KvBlockRefs> refs_;
  std::unique_ptr<PrefixCache> prefix_;
  std::unique_ptr<StepPlanner> planner_;
  std::unique_ptr<StepExecutor> executor_;
  StepOutput output_;
  struct Drawn {
    PendingTokens tokens;
    std::vector<ScheduledSequence*> sequences;  // one per pick, in order
  };
  std::optional<Drawn> in_flight_;

  // Shared with submitting threads.
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<ScheduledSequence>> arrivals_;
  bool draining_ = false;
  bool stopping_ = false;

  std::atomic<int> queued_{0}, running_count_{0}, free_blocks_{0}, cached_blocks_{0};
  std::atomic<uint64_t> steps_{0}, image_hits_{0}, images_encoded_{0}, preemptions_{0}, prefix_hits_{0};
  std::thread thread_;  // last: started once everything above exists
};

}  // namespace moxin
