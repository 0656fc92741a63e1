#include "runtime/scheduler.hpp"

#include <algorithm>

#include "core/check.hpp"
#include "runtime/kv_block_refs.hpp"
#include "runtime/prefix_cache.hpp"
#include "runtime/scheduled_sequence.hpp"
#include "runtime/step_executor.hpp"
#include "runtime/step_planner.hpp"
#include "runtime/token_picker.hpp"

namespace moxin {
namespace {

PlannerOptions planner_options(const SchedulerOptions& o, const Backend& backend) {
  return {.max_batch = o.max_batch, .prefill_chunk = o.prefill_chunk, .prefill_budget = o.prefill_budget,
          .prefix_cache = o.prefix_cache, .min_prefill_rows = backend.min_prefill_rows()};
}

ScheduledSequence& scheduled(PlannedSequence* s) { return static_cast<ScheduledSequence&>(*s); }

}  // namespace

Scheduler::Scheduler(Engine& engine, const SchedulerOptions& options, SchedulerObserver* observer)
    : engine_(engine),
      options_(options),
      issue_ahead_(options.issue_ahead.value_or(engine.backend().issues_asynchronously())),
      max_positions_(std::min(engine.config().decoder.max_position, engine.kv_pool().capacity_tokens())),
      image_tokens_(engine.config().dino.num_patches),
      refs_(std::make_unique<KvBlockRefs>(engine.kv_pool())),
      prefix_(std::make_unique<PrefixCache>(*refs_)),
      planner_(std::make_unique<StepPlanner>(planner_options(options, engine.backend()), *refs_, *prefix_)),
      executor_(std::make_unique<StepExecutor>(engine, options.image_cache)),
      output_(observer) {
  MOXIN_CHECK(options.max_queue >= 1, "[scheduler] --max-queue must be >= 1, got ", options.max_queue);
  publish_stats();
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<RequestStream> Scheduler::submit(GenerationRequest request) {
  request.validate();
  MOXIN_CHECK(!request.prompt_ids.empty(), "[scheduler] a prompt needs at least its BOS token");
  const int64_t prompt = static_cast<int64_t>(request.prompt_ids.size()) + (request.image ? image_tokens_ : 0);
  MOXIN_CHECK(prompt + request.max_tokens <= max_positions_, "[scheduler] the prompt's ", prompt,
              " tokens plus max_tokens ", request.max_tokens, " exceed the context of ", max_positions_,
              " tokens (shorten the prompt, lower max_tokens or raise --max-context)");

  auto s = std::make_unique<ScheduledSequence>(engine_.tokenizer(), std::move(request), image_tokens_);
  if (options_.prefix_cache) {
    const std::optional<Digest> image = s->request.image ? std::optional(s->request.image->digest) : std::nullopt;
    s->prompt_keys = prefix_block_keys(image, s->inputs, engine_.kv_pool().block_size(), SIZE_MAX);
  }
  std::shared_ptr<RequestStream> stream = s->stream;
  {
    std::lock_guard lock(mutex_);
    // Requests that free batch slots will take at the next step do not count as waiting.
    const int free_slots = std::max(0, options_.max_batch - running_count_.load());
    const int waiting = queued_.load() + static_cast<int>(arrivals_.size());
    if (draining_ || stopping_ || waiting >= options_.max_queue + free_slots) return nullptr;
    arrivals_.push_back(std::move(s));
  }
  wake_.notify_all();
  return stream;
}

void Scheduler::drain() {
  {
    std::lock_guard lock(mutex_);
    draining_ = true;
  }
  wake_.notify_all();
}

void Scheduler::wait() {
  if (thread_.joinable()) thread_.join();
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  {
    std::lock_guard lock(mutex_);
    s.queued = queued_.load() + static_cast<int>(arrivals_.size());
  }
  s.running = running_count_.load();
  s.free_blocks = free_blocks_.load();
  s.cached_blocks = cached_blocks_.load();
  s.steps = steps_.load();
  s.prefix_hit_blocks = prefix_hits_.load();
  s.image_cache_hits = image_hits_.load();
  s.images_encoded = images_encoded_.load();
  s.preemptions = preemptions_.load();
  return s;
}

bool Scheduler::wait_for_work() {
  std::unique_lock lock(mutex_);
  const auto idle = [&] { return arrivals_.empty() && planner_->queued() == 0 && planner_->running() == 0; };
  wake_.wait(lock, [&] { return stopping_ || draining_ || !idle(); });
  if (stopping_) return false;
  return !(draining_ && idle());
}

void Scheduler::take_arrivals() {
  for (auto& s : arrivals_) planner_->enqueue(std::move(s));
  arrivals_.clear();
}

void Scheduler::loop() {
  while (wait_for_work()) {
    try {
      iterate();
    } catch (const std::exception& e) {
      // Not expected (iterate handles engine errors): end the running requests rather than
      // the server, so the next ones start from a clean state.
      abandon_drawn();
      fail_running(cat("[scheduler] internal error: ", e.what()));
    }
    planner_->retire();
    publish_stats();
  }
  abandon_drawn();
  {
    std::lock_guard lock(mutex_);
    take_arrivals();
  }
  for (auto& s : planner_->take_all())
    if (!s->done) output_.fail(scheduled(s.get()), "[scheduler] the server is shutting down");
  publish_stats();
}

void Scheduler::iterate() {
  StepPlan plan;
  {
    // Under the lock, so that submit() always sees how many wait: in the inbox or the queue.
    std::lock_guard lock(mutex_);
    take_arrivals();
    plan = planner_->plan();
    queued_.store(static_cast<int>(planner_->queued()));
  }
  for (const StepPlan::Ending& e : plan.ended) output_.on_plan_end(scheduled(e.sequence), e.why);
  // A decode step (one launch of a captured graph) is issued before the host reads the last
  // step's tokens, its inputs in part. Anything else is read first: the images of admitted
  // sequences and a prefill's hundreds of launches can hold the host for most of a step (the
  // launch queue fills, a large upload waits for the stream), which the tokens would wait for
  // (H100, 32 streams: p50 time to first token 82 ms against 54 when read first).
  const bool ahead = issue_ahead_ && std::all_of(plan.chunks.begin(), plan.chunks.end(),
                                                 [](const StepPlan::Chunk& c) { return c.count == 1; });
  if (!ahead) deliver_drawn();
  std::vector<ScheduledSequence*> admitted;
  for (PlannedSequence* s : plan.admitted) admitted.push_back(&scheduled(s));
  for (auto& [s, message] : executor_->encode_images(admitted)) output_.fail(*s, message);
  // Ended by the tokens just read, or their image failed.
  std::erase_if(plan.chunks, [](const StepPlan::Chunk& c) { return c.sequence->done; });

  std::optional<Tensor> logits;
  if (!plan.chunks.empty()) {
    try {
      logits = executor_->forward(plan.chunks);
      ++steps_;
      for (const StepPlan::Chunk& c : plan.chunks) planner_->offer_prompt_blocks(*c.sequence);
    } catch (const std::exception& e) {
      for (const StepPlan::Chunk& c : plan.chunks)
        if (!c.sequence->done) output_.fail(scheduled(c.sequence), e.what());
    }
  }
  if (ahead) deliver_drawn();
  if (logits) draw(plan.chunks, *logits);
  if (!issue_ahead_) deliver_drawn();
}

void Scheduler::draw(const std::vector<StepPlan::Chunk>& chunks, const Tensor& logits) {
  std::vector<TokenPick> picks;
  std::vector<ScheduledSequence*> picked;
  for (size_t i = 0; i < chunks.size(); ++i) {
    ScheduledSequence& s = scheduled(chunks[i].sequence);
    // Ended by the tokens just delivered (this step's position was computed for nothing), or
    // a prompt chunk with more to come.
    if (s.done || s.pending() != 0) continue;
    picks.push_back({i, &s.core});
    picked.push_back(&s);
  }
  if (picks.empty()) return;
  // Asked before the draw: a host-side draw applies the token to the core at once.
  std::vector<bool> last;
  for (const ScheduledSequence* s : picked) last.push_back(s->core.next_is_last());
  try {
    PendingTokens tokens = pick_tokens(engine_.backend(), logits, picks, engine_.drawn_tokens());
    for (size_t i = 0; i < picked.size(); ++i) {
      picked[i]->drawn_row = static_cast<int>(picks[i].row);
      picked[i]->drawn_is_last = last[i];
    }
    in_flight_ = Drawn{std::move(tokens), std::move(picked)};
  } catch (const std::exception& e) {
    for (ScheduledSequence* s : picked) output_.fail(*s, e.what());
  }
}

void Scheduler::deliver_drawn() {
  if (!in_flight_) return;
  Drawn drawn = std::move(*in_flight_);
  in_flight_.reset();
  for (ScheduledSequence* s : drawn.sequences) s->drawn_row = -1;
  try {
    std::vector<TokenOutcome> outcomes = drawn.tokens.wait();
    for (size_t i = 0; i < drawn.sequences.size(); ++i)
      if (!drawn.sequences[i]->done) output_.on_token(*drawn.sequences[i], std::move(outcomes[i]));
  } catch (const std::exception& e) {
    for (ScheduledSequence* s : drawn.sequences)
      if (!s->done) output_.fail(*s, e.what());
  }
}

void Scheduler::abandon_drawn() {
  if (!in_flight_) return;
  for (ScheduledSequence* s : in_flight_->sequences) s->drawn_row = -1;
  in_flight_.reset();
}

// Done ones too: one the planner ended in a plan that threw before it was reported still needs
// its outcome (a stream keeps only the first).
void Scheduler::fail_running(const std::string& message) {
  for (const auto& s : planner_->running_sequences()) output_.fail(scheduled(s.get()), message);
}

void Scheduler::publish_stats() {
  {
    std::lock_guard lock(mutex_);
    queued_.store(static_cast<int>(planner_->queued()));
  }
  running_count_.store(static_cast<int>(planner_->running()));
  free_blocks_.store(refs_->free_blocks());
  cached_blocks_.store(static_cast<int>(prefix_->size()));
  prefix_hits_.store(planner_->stats().prefix_hit_blocks);
  preemptions_.store(planner_->stats().preemptions);
  image_hits_.store(executor_->image_cache_hits());
  images_encoded_.store(executor_->images_encoded());
}

}  // namespace moxin
