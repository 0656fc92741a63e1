// The scheduler's policy, with no engine and no thread: a queue of waiting sequences, the
// running set and the KV blocks (a pool with reference counts and the prefix cache) in, the
// next step's plan out. Every iteration of the scheduler calls plan(), runs the plan's chunks
// (Engine::step advances each sequence's kv.length), then offer_prompt_blocks() for each chunk
// and retire() after its outputs.
//
// plan():
//   1. ends cancelled running sequences and forgets cancelled queued ones;
//   2. admits queued sequences, oldest first (preempted ones are at the head), while the batch
//      has room and the KV cache can hold each one's prompt plus a block of growth per running
//      sequence, each starting from the longest prompt prefix the prefix cache holds;
//   3. plans ONE step over the running sequences in admission order: the next position of each
//      decoding sequence, and a chunk (at most prefill_chunk positions) of each prefilling one
//      while the step's prefill budget lasts (the first chunk always goes in);
//   4. when the step's blocks cannot be found (evicting unused cached blocks first), preempts
//      the newest running sequence (its blocks freed; it waits at the head of the queue to
//      compute its prompt and what it has generated again) and plans again;
//   5. grows the planned sequences' block tables.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "runtime/content_hash.hpp"
#include "runtime/engine.hpp"
#include "runtime/kv_block_refs.hpp"
#include "runtime/prefix_cache.hpp"

namespace moxin {

// What the planner knows of a sequence; the scheduler's sequences (and the tests') extend it.
struct PlannedSequence {
  virtual ~PlannedSequence() = default;
  // Inputs known so far: the prompt's positions, then each sampled token fed back (one drawn on
  // the device whose value the host has not read yet counts: it is fed back from there).
  virtual size_t positions() const = 0;
  virtual bool cancelled() const = 0;

  size_t prompt_positions = 0;
  bool nothing_to_generate = false;  // max_tokens 0: ends without computing anything
  std::vector<Digest> prompt_keys;   // prefix-cache keys of the prompt's full blocks
  size_t offered_blocks = 0;         // leading prompt blocks the prefix cache has
  SequenceState kv;                  // positions [0, kv.length) are in the KV cache
  uint64_t order = 0;                // admission order: the newest is preempted first
  bool done = false;                 // ended: planned no more, retired at the next retire()
  // A token drawn in the engine's drawn tokens (Engine::drawn_tokens) at this row and not yet
  // read by the host: the next step takes it from there. -1: none.
  int drawn_row = -1;
  // That token is the generation's last by count (max_tokens): nothing is planned after it.
  bool drawn_is_last = false;

  size_t pending() const { return positions() - static_cast<size_t>(kv.length); }
};

struct PlannerOptions {
  int max_batch = 32;         // sequences running at once
  int prefill_chunk = 256;    // prompt positions of one sequence per step
  int prefill_budget = 512;   // prompt positions of all sequences per step (at least one chunk)
  bool prefix_cache = true;
  // The backend's Backend::min_prefill_rows(): a prompt chunk is never shorter (unless the
  // prompt has fewer positions left), and that many are left to compute after a cached prefix.
  size_t min_prefill_rows = 1;
};

enum class PlanEnd {
  Cancelled,          // the client let go of it
  NothingToGenerate,  // max_tokens 0
  DoesNotFit,         // nothing runs and it still does not fit the KV cache
  CacheTooSmall,      // the step's blocks cannot be found even with one sequence left
};

struct StepPlan {
  struct Chunk {
    PlannedSequence* sequence;
    size_t count;  // positions [kv.length, kv.length + count) computed in this step
  };
  std::vector<Chunk> chunks;
  std::vector<PlannedSequence*> admitted;  // newly running, in admission order
  struct Ending {
    PlannedSequence* sequence;
    PlanEnd why;
  };
  std::vector<Ending> ended;  // marked done; the caller reports why, retire() frees them
};

struct PlannerStats {
  uint64_t preemptions = 0;
  uint64_t prefix_hit_blocks = 0;
};

class StepPlanner {
 public:
  // Throws moxin::Error for options that cannot work.
  StepPlanner(const PlannerOptions& options, KvBlockRefs& refs, PrefixCache& prefix);
  StepPlanner(const StepPlanner&) = delete;
  StepPlanner& operator=(const StepPlanner&) = delete;

  void enqueue(std::unique_ptr<PlannedSequence> sequence);  // behind those already waiting
  StepPlan plan();
  // After the step: the sequence's full prompt blocks now written go to the prefix cache.
  void offer_prompt_blocks(PlannedSequence& sequence);
  // Frees the blocks of the sequences that are done and forgets them.
  void retire();
  // Shutdown: every sequence, waiting or running, handed back (blocks freed).
  std::vector<std::unique_ptr<PlannedSequence>> take_all();

  size_t queued() const { return queue_.size(); }
  size_t running() const { return running_.size(); }
  const std::vector<std::unique_ptr<PlannedSequence>>& running_sequences() const { return running_; }
  const PlannerStats& stats() const { return stats_; }

 private:
  void drop_cancelled(StepPlan& plan);
  void admit(StepPlan& plan);
  bool try_admit(PlannedSequence& s);
  std::vector<StepPlan::Chunk> plan_chunks() const;
  size_t prefill_chunk(size_t pending) const;
  void preempt_newest();
  void end(std::unique_ptr<PlannedSequence> s, PlanEnd why, StepPlan& plan);

  PlannerOptions options_;
  KvBlockRefs& refs_;
  PrefixCache& prefix_;
  std::deque<std::unique_ptr<PlannedSequence>> queue_;    // preempted first, then in arrival order
  std::vector<std::unique_ptr<PlannedSequence>> running_;  // in admission order
  std::vector<std::unique_ptr<PlannedSequence>> ended_;    // ended while waiting: until retire()
  uint64_t next_order_ = 0;
  PlannerStats stats_;
};

}  // namespace moxin
