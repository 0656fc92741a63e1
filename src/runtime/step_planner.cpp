#include "runtime/step_planner.hpp"

#include <algorithm>

#include "core/check.hpp"

namespace moxin {

StepPlanner::StepPlanner(const PlannerOptions& options, KvBlockRefs& refs, PrefixCache& prefix)
    : options_(options), refs_(refs), prefix_(prefix) {
  MOXIN_CHECK(options.max_batch >= 1, "[scheduler] --max-batch must be >= 1, got ", options.max_batch);
  MOXIN_CHECK(options.min_prefill_rows >= 1, "[scheduler] min_prefill_rows must be >= 1");
  // A chunk of at least 2 x min_prefill_rows can always be cut so both parts keep the minimum.
  MOXIN_CHECK(options.prefill_chunk >= static_cast<int>(2 * options.min_prefill_rows),
              "[scheduler] --prefill-chunk must be >= ", 2 * options.min_prefill_rows, ", got ", options.prefill_chunk);
  MOXIN_CHECK(options.prefill_budget >= options.prefill_chunk, "[scheduler] the prefill budget (",
              options.prefill_budget, ") must be at least one chunk (", options.prefill_chunk, ")");
}

void StepPlanner::enqueue(std::unique_ptr<PlannedSequence> sequence) { queue_.push_back(std::move(sequence)); }

StepPlan StepPlanner::plan() {
  StepPlan plan;
  drop_cancelled(plan);
  admit(plan);
  plan.chunks = plan_chunks();
  for (;;) {
    int needed = 0;
    for (const StepPlan::Chunk& c : plan.chunks)
      needed += refs_.missing_blocks(c.sequence->kv.block_table, c.sequence->kv.length + static_cast<int64_t>(c.count));
    if (prefix_.make_free(needed)) break;
    if (running_.size() <= 1) {  // the scheduler bounds a sequence by the cache, so: a bug
      for (auto& s : running_)
        if (!s->done) {
          s->done = true;
          plan.ended.push_back({s.get(), PlanEnd::CacheTooSmall});
        }
      plan.chunks.clear();
      return plan;
    }
    preempt_newest();
    plan.chunks = plan_chunks();
  }
  // A sequence preempted above is no longer running: it is not "admitted" this step.
  std::erase_if(plan.admitted, [&](PlannedSequence* a) {
    return std::none_of(running_.begin(), running_.end(), [&](const auto& s) { return s.get() == a; });
  });
  for (const StepPlan::Chunk& c : plan.chunks)
    refs_.grow(c.sequence->kv.block_table, c.sequence->kv.length + static_cast<int64_t>(c.count));
  return plan;
}

void StepPlanner::end(std::unique_ptr<PlannedSequence> s, PlanEnd why, StepPlan& plan) {
  s->done = true;
  plan.ended.push_back({s.get(), why});
  ended_.push_back(std::move(s));
}

void StepPlanner::drop_cancelled(StepPlan& plan) {
  for (auto& s : running_)
    if (!s->done && s->cancelled()) {
      s->done = true;
      plan.ended.push_back({s.get(), PlanEnd::Cancelled});
    }
  // Nobody waits for a cancelled sequence that never ran.
  std::erase_if(queue_, [](const std::unique_ptr<PlannedSequence>& s) { return s->cancelled(); });
}

void StepPlanner::admit(StepPlan& plan) {
  while (static_cast<int>(running_.size()) < options_.max_batch && !queue_.empty()) {
    std::unique_ptr<PlannedSequence> s = std::move(queue_.front());
    queue_.pop_front();
    if (s->done) {  // preempted, then ended by the token it had in flight
      ended_.push_back(std::move(s));
      continue;
    }
    if (s->nothing_to_generate) {  // as the single-sequence path: no prefill at all
      end(std::move(s), PlanEnd::NothingToGenerate, plan);
      continue;
    }
    if (!try_admit(*s)) {
      if (running_.empty()) {  // nothing will free blocks: it can never run
        end(std::move(s), PlanEnd::DoesNotFit, plan);
        continue;
      }
      queue_.push_front(std::move(s));
      break;
    }
    s->order = next_order_++;
    plan.admitted.push_back(s.get());
    running_.push_back(std::move(s));
  }
}

bool StepPlanner::try_admit(PlannedSequence& s) {
  const int block_size = refs_.block_size();
  const size_t n = s.positions();
  if (options_.prefix_cache) {
    // Reuse whole cached blocks, but leave the last positions to compute: the last one gives
    // the logits, and a chunk of at least min_prefill_rows keeps the backend's numerics.
    const size_t reusable = (n - std::min(options_.min_prefill_rows, n)) / static_cast<size_t>(block_size);
    const size_t blocks = std::min(s.prompt_keys.size(), reusable);
    s.kv.block_table = prefix_.acquire(std::span<const Digest>(s.prompt_keys).first(blocks));
    s.kv.length = static_cast<int64_t>(s.kv.block_table.size()) * block_size;
    s.offered_blocks = s.kv.block_table.size();
  }
  // Blocks for every known position and the next generated one, plus one block of growth per
  // running sequence, so admitting does not force an immediate preemption.
  const int needed = refs_.missing_blocks(s.kv.block_table, static_cast<int64_t>(n) + 1);
  const int headroom = static_cast<int>(running_.size());
  if (refs_.free_blocks() + prefix_.evictable() < needed + headroom) {
    refs_.release(s.kv.block_table);
    s.kv.length = 0;
    s.offered_blocks = 0;
    return false;
  }
  stats_.prefix_hit_blocks += s.offered_blocks;
  return true;
}

size_t StepPlanner::prefill_chunk(size_t pending) const {
  const size_t limit = static_cast<size_t>(options_.prefill_chunk);
  if (pending <= limit) return pending;
  // Never leave fewer than min_prefill_rows for the next chunk.
  return pending - limit < options_.min_prefill_rows ? pending - options_.min_prefill_rows : limit;
}

std::vector<StepPlan::Chunk> StepPlanner::plan_chunks() const {
  std::vector<StepPlan::Chunk> chunks;
  size_t budget = static_cast<size_t>(options_.prefill_budget);
  bool any_prefill = false;
  for (const auto& s : running_) {
    if (s->done || (s->drawn_row >= 0 && s->drawn_is_last)) continue;
    const size_t pending = s->pending();
    if (pending == 1) {  // decoding (or a one-position prompt): always in the step
      chunks.push_back({s.get(), 1});
      continue;
    }
    const size_t count = prefill_chunk(pending);
    if (any_prefill && count > budget) continue;
    chunks.push_back({s.get(), count});
    budget -= std::min(budget, count);
    any_prefill = true;
  }
  return chunks;
}

void StepPlanner::preempt_newest() {
  auto newest = std::max_element(running_.begin(), running_.end(), [](const auto& a, const auto& b) {
    return a->done != b->done ? a->done : a->order < b->order;
  });
  std::unique_ptr<PlannedSequence> s = std::move(*newest);
  running_.erase(newest);
  // Everything it computed is dropped; it computes its prompt and generated tokens again
  // (cached prompt blocks still help) and continues where it stopped.
  refs_.release(s->kv.block_table);
  s->kv.length = 0;
  s->offered_blocks = 0;
  ++stats_.preemptions;
  queue_.push_front(std::move(s));
}

void StepPlanner::offer_prompt_blocks(PlannedSequence& s) {
  if (!options_.prefix_cache) return;
  const size_t written = std::min(static_cast<size_t>(s.kv.length) / static_cast<size_t>(refs_.block_size()),
                                  s.prompt_keys.size());
  for (size_t b = s.offered_blocks; b < written; ++b) prefix_.insert(s.prompt_keys[b], s.kv.block_table[b]);
  s.offered_blocks = std::max(s.offered_blocks, written);
}

void StepPlanner::retire() {
  for (auto& s : running_)
    if (s->done) refs_.release(s->kv.block_table);
  std::erase_if(running_, [](const std::unique_ptr<PlannedSequence>& s) { return s->done; });
  ended_.clear();
}

std::vector<std::unique_ptr<PlannedSequence>> StepPlanner::take_all() {
  std::vector<std::unique_ptr<PlannedSequence>> all;
  for (auto& s : queue_) all.push_back(std::move(s));
  for (auto& s : running_) {
    refs_.release(s->kv.block_table);
    all.push_back(std::move(s));
  }
  for (auto& s : ended_) all.push_back(std::move(s));
  queue_.clear();
  running_.clear();
  ended_.clear();
  return all;
}

}  // namespace moxin
