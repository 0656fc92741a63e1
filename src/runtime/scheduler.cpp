#include "runtime/scheduler.hpp"

#include <algorithm>
#include <chrono>
#include <map>

#include "core/check.hpp"
#include "runtime/image_feature_cache.hpp"
#include "runtime/kv_block_refs.hpp"
#include "runtime/prefix_cache.hpp"
#include "runtime/stop_matcher.hpp"
#include "runtime/token_logprobs.hpp"
#include "text/tokenizer.hpp"

namespace moxin {
namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// A step never computes fewer prompt positions of a sequence than this (unless it has fewer
// left). The CPU backend multiplies up to 4 rows with its GEMV kernel and more with its GEMM,
// which round differently; keeping every prompt chunk above 4 rows computes a prompt's KV
// exactly as a single-sequence prefill (`moxin generate`) does, however it is chunked and
// whatever prefix came from the cache.
constexpr size_t kMinPrefillRows = 5;

// Positions of a prefilling sequence to compute in one step.
size_t prefill_chunk(size_t pending, size_t limit) {
  if (pending <= limit) return pending;
  return pending - limit < kMinPrefillRows ? pending - kMinPrefillRows : limit;
}

}  // namespace

struct Scheduler::Sequence {
  Sequence(const Tokenizer& tokenizer, GenerationRequest r)
      : request(std::move(r)), sampler(request.sampling), detok(tokenizer), stops(request.stop) {}

  std::shared_ptr<RequestStream> stream = std::make_shared<RequestStream>();
  GenerationRequest request;
  // BOS, the image's rows, the other prompt tokens, then each sampled token (fed back at the
  // next step). Positions [0, kv.length) are in the KV cache.
  std::vector<PositionInput> inputs;
  size_t prompt_positions = 0;
  size_t image_end = 0;              // 1 + image tokens with an image, else 0
  std::vector<Digest> prompt_keys;   // prefix-cache keys of the prompt's full blocks
  size_t offered_blocks = 0;         // leading prompt blocks the prefix cache has
  SequenceState kv;
  Tensor image_rows;                 // projected image, once known
  Sampler sampler;
  StreamDecoder detok;
  StopMatcher stops;
  std::vector<int32_t> context;      // prompt ids + generated ids, for the repetition penalty
  int generated = 0;
  bool done = false;
  bool sampled_any = false;
  uint64_t order = 0;                // admission order: the newest is preempted first
  Clock::time_point submitted = Clock::now();
  Clock::time_point last_token;

  size_t pending() const { return inputs.size() - static_cast<size_t>(kv.length); }
  // The preprocessed pixels are no longer needed once the features are held.
  void set_image_rows(Tensor rows) {
    image_rows = std::move(rows);
    request.image->dino = {};
    request.image->siglip = {};
  }
  bool needs_image_rows() const { return static_cast<size_t>(kv.length) < image_end && !image_rows.data; }
};

struct Scheduler::Planned {
  Sequence* sequence;
  size_t count;  // positions computed in this step
};

Scheduler::Scheduler(Engine& engine, const SchedulerOptions& options, SchedulerObserver* observer)
    : engine_(engine),
      options_(options),
      observer_(observer),
      max_positions_(std::min(engine.config().decoder.max_position, engine.kv_pool().capacity_tokens())),
      image_tokens_(engine.config().dino.num_patches),
      refs_(std::make_unique<KvBlockRefs>(engine.kv_pool())),
      prefix_(std::make_unique<PrefixCache>(*refs_)),
      images_(std::make_unique<ImageFeatureCache>(options.image_cache)) {
  MOXIN_CHECK(options.max_batch >= 1, "[scheduler] --max-batch must be >= 1, got ", options.max_batch);
  MOXIN_CHECK(options.max_queue >= 1, "[scheduler] --max-queue must be >= 1, got ", options.max_queue);
  MOXIN_CHECK(options.prefill_chunk >= static_cast<int>(2 * kMinPrefillRows), "[scheduler] --prefill-chunk must be >= ",
              2 * kMinPrefillRows, ", got ", options.prefill_chunk);
  MOXIN_CHECK(options.prefill_budget >= options.prefill_chunk, "[scheduler] the prefill budget (",
              options.prefill_budget, ") must be at least one chunk (", options.prefill_chunk, ")");
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
  request.sampling.validate();
  MOXIN_CHECK(!request.prompt_ids.empty(), "[scheduler] a prompt needs at least its BOS token");
  MOXIN_CHECK(request.max_tokens >= 0, "[scheduler] max_tokens must be >= 0, got ", request.max_tokens);
  const int64_t prompt = static_cast<int64_t>(request.prompt_ids.size()) + (request.image ? image_tokens_ : 0);
  MOXIN_CHECK(prompt + request.max_tokens <= max_positions_, "[scheduler] the prompt's ", prompt,
              " tokens plus max_tokens ", request.max_tokens, " exceed the context of ", max_positions_,
              " tokens (shorten the prompt, lower max_tokens or raise --max-context)");
  for (const std::string& stop : request.stop)
    MOXIN_CHECK(!stop.empty(), "[scheduler] stop strings must not be empty");

  auto s = std::make_unique<Sequence>(engine_.tokenizer(), std::move(request));
  const GenerationRequest& r = s->request;
  s->inputs.push_back({r.prompt_ids[0], -1});
  if (r.image) {
    for (int row = 0; row < image_tokens_; ++row) s->inputs.push_back({0, row});
    s->image_end = s->inputs.size();
  }
  for (size_t i = 1; i < r.prompt_ids.size(); ++i) s->inputs.push_back({r.prompt_ids[i], -1});
  s->prompt_positions = s->inputs.size();
  s->context = r.prompt_ids;
  if (options_.prefix_cache) {
    const std::optional<Digest> image = r.image ? std::optional<Digest>(r.image->digest) : std::nullopt;
    s->prompt_keys = prefix_block_keys(image, s->inputs, engine_.kv_pool().block_size(), SIZE_MAX);
  }

  std::shared_ptr<RequestStream> stream = s->stream;
  {
    std::lock_guard lock(mutex_);
    // Requests that free batch slots will take at the next step do not count as waiting.
    const int free_slots = std::max(0, options_.max_batch - running_count_.load());
    if (draining_ || stopping_ || static_cast<int>(queue_.size()) >= options_.max_queue + free_slots) return nullptr;
    queue_.push_back(std::move(s));
    queued_.store(static_cast<int>(queue_.size()));
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
  s.queued = queued_.load();
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
  wake_.wait(lock, [&] { return stopping_ || draining_ || !queue_.empty() || !running_.empty(); });
  if (stopping_) return false;
  return !(draining_ && queue_.empty() && running_.empty());
}

void Scheduler::loop() {
  while (wait_for_work()) {
    try {
      drop_cancelled();
      admit();
      if (!running_.empty()) run_step();
    } catch (const std::exception& e) {
      // Not expected (run_step handles engine errors): end the running requests rather than
      // the server, so the next ones start from a clean state.
      for (auto& s : running_) fail(*s, cat("[scheduler] internal error: ", e.what()));
    }
    retire_done();
    publish_stats();
  }
  std::deque<std::unique_ptr<Sequence>> left;
  {
    std::lock_guard lock(mutex_);
    left.swap(queue_);
  }
  for (auto& s : left) fail(*s, "[scheduler] the server is shutting down");
  for (auto& s : running_) fail(*s, "[scheduler] the server is shutting down");
  retire_done();
  publish_stats();
}

void Scheduler::drop_cancelled() {
  for (auto& s : running_)
    if (s->stream->cancelled()) fail(*s, "[scheduler] cancelled by the client");
  std::lock_guard lock(mutex_);
  std::erase_if(queue_, [](const std::unique_ptr<Sequence>& s) { return s->stream->cancelled(); });
}

void Scheduler::admit() {
  std::vector<Sequence*> admitted;
  while (static_cast<int>(running_.size()) < options_.max_batch) {
    std::unique_ptr<Sequence> s;
    {
      std::lock_guard lock(mutex_);
      if (queue_.empty()) break;
      s = std::move(queue_.front());
      queue_.pop_front();
    }
    if (s->request.max_tokens == 0) {  // as the single-sequence path: no prefill at all
      finish(*s, FinishReason::Length, {}, std::nullopt);
      continue;
    }
    if (!try_admit(s)) {
      if (running_.empty()) {  // nothing will free blocks: it can never run
        fail(*s, "[scheduler] the request does not fit the KV cache (raise --max-context)");
        continue;
      }
      std::lock_guard lock(mutex_);
      queue_.push_front(std::move(s));
      break;
    }
    s->order = next_order_++;
    running_.push_back(std::move(s));
    admitted.push_back(running_.back().get());
  }
  if (!admitted.empty()) encode_images(admitted);
}

bool Scheduler::try_admit(std::unique_ptr<Sequence>& s) {
  const int block_size = refs_->block_size();
  if (options_.prefix_cache) {
    // Reuse whole cached blocks, but leave the last positions to compute: the last one gives
    // the logits, and a chunk of at least kMinPrefillRows keeps the prompt's numerics.
    const size_t n = s->inputs.size();
    const size_t reusable = (n - std::min(kMinPrefillRows, n)) / static_cast<size_t>(block_size);
    const size_t blocks = std::min(s->prompt_keys.size(), reusable);
    s->kv.block_table = prefix_->acquire(std::span<const Digest>(s->prompt_keys).first(blocks));
    s->kv.length = static_cast<int64_t>(s->kv.block_table.size()) * block_size;
    s->offered_blocks = s->kv.block_table.size();
  }
  // Blocks for the whole prompt and the first generated token, plus one block of growth per
  // running sequence, so admitting does not force an immediate preemption.
  const int needed = refs_->missing_blocks(s->kv.block_table, static_cast<int64_t>(s->inputs.size()) + 1);
  const int headroom = static_cast<int>(running_.size());
  if (refs_->free_blocks() + prefix_->evictable() < needed + headroom) {
    refs_->release(s->kv.block_table);
    s->kv.length = 0;
    s->offered_blocks = 0;
    return false;
  }
  prefix_hits_ += s->offered_blocks;
  return true;
}

void Scheduler::encode_images(const std::vector<Sequence*>& sequences) {
  std::map<Digest, std::vector<Sequence*>> missing;
  for (Sequence* s : sequences) {
    if (!s->needs_image_rows()) continue;
    if (std::optional<Tensor> rows = images_->find(s->request.image->digest)) {
      s->set_image_rows(*rows);
      ++image_hits_;
    } else {
      missing[s->request.image->digest].push_back(s);
    }
  }
  if (missing.empty()) return;

  // One call of the vision encoders for all distinct images of this admission round.
  const int batch = static_cast<int>(missing.size());
  std::vector<float> dino, siglip;
  for (const auto& [digest, users] : missing) {
    const RequestImage& image = *users.front()->request.image;
    dino.insert(dino.end(), image.dino.begin(), image.dino.end());
    siglip.insert(siglip.end(), image.siglip.begin(), image.siglip.end());
  }
  try {
    const ImageFeatures features = engine_.encode_images(dino, siglip, batch);
    Backend& backend = engine_.backend();
    const int hidden = engine_.config().decoder.hidden;
    int b = 0;
    for (auto& [digest, users] : missing) {
      // A copy per image, so the cache holds no other image's rows alive.
      Tensor rows = backend.empty_act({image_tokens_, hidden});
      backend.copy_rows(features.projected.rows_view(static_cast<int64_t>(b++) * image_tokens_, image_tokens_),
                        rows, 0);
      images_->insert(digest, rows);
      for (Sequence* s : users) s->set_image_rows(rows);
    }
    images_encoded_ += static_cast<uint64_t>(batch);
  } catch (const std::exception& e) {
    for (auto& [digest, users] : missing)
      for (Sequence* s : users) fail(*s, e.what());
  }
}

std::vector<Scheduler::Planned> Scheduler::plan_step() const {
  std::vector<Planned> plan;
  size_t budget = static_cast<size_t>(options_.prefill_budget);
  bool any_prefill = false;
  for (const auto& s : running_) {
    if (s->done) continue;
    const size_t pending = s->pending();
    if (pending == 1) {  // decoding (or a one-token prompt): always in the step
      plan.push_back({s.get(), 1});
      continue;
    }
    const size_t count = prefill_chunk(pending, static_cast<size_t>(options_.prefill_chunk));
    if (any_prefill && count > budget) continue;
    plan.push_back({s.get(), count});
    budget -= std::min(budget, count);
    any_prefill = true;
  }
  return plan;
}

void Scheduler::preempt_newest() {
  auto newest = std::max_element(running_.begin(), running_.end(), [](const auto& a, const auto& b) {
    return a->done != b->done ? a->done : a->order < b->order;
  });
  std::unique_ptr<Sequence> s = std::move(*newest);
  running_.erase(newest);
  // Everything it computed is dropped; it prefills its prompt and generated tokens again
  // (cached prompt blocks still help) and continues where it stopped.
  refs_->release(s->kv.block_table);
  s->kv.length = 0;
  s->offered_blocks = 0;
  ++preemptions_;
  std::lock_guard lock(mutex_);
  queue_.push_front(std::move(s));
}

Tensor Scheduler::embed_inputs(const Sequence& s, size_t begin, size_t count) {
  const auto token_run = [&](size_t from, size_t to) {
    std::vector<int32_t> ids;
    for (size_t i = from; i < to; ++i) ids.push_back(s.inputs[i].token);
    return engine_.embed(ids);
  };
  const size_t end = begin + count;
  bool any_image = false;
  for (size_t i = begin; i < end; ++i) any_image = any_image || s.inputs[i].is_image();
  if (!any_image) return token_run(begin, end);

  Backend& backend = engine_.backend();
  Tensor out = backend.empty_act({static_cast<int64_t>(count), engine_.config().decoder.hidden});
  for (size_t i = begin; i < end;) {
    const bool image = s.inputs[i].is_image();
    size_t j = i;
    while (j < end && s.inputs[j].is_image() == image) ++j;
    const int64_t at = static_cast<int64_t>(i - begin);
    if (image) {
      backend.copy_rows(s.image_rows.rows_view(s.inputs[i].image_row, static_cast<int64_t>(j - i)), out, at);
    } else {
      backend.copy_rows(token_run(i, j), out, at);
    }
    i = j;
  }
  return out;
}

void Scheduler::run_step() {
  std::vector<Planned> plan = plan_step();
  for (;;) {
    int needed = 0;
    for (const Planned& p : plan)
      needed += refs_->missing_blocks(p.sequence->kv.block_table,
                                      p.sequence->kv.length + static_cast<int64_t>(p.count));
    if (prefix_->make_free(needed)) break;
    if (running_.size() <= 1) {  // submit() bounds a sequence by the cache, so: a bug
      for (auto& s : running_) fail(*s, "[scheduler] the KV cache is too small for this request");
      return;
    }
    preempt_newest();
    plan = plan_step();
  }
  if (plan.empty()) return;

  try {
    for (const Planned& p : plan)
      refs_->grow(p.sequence->kv.block_table, p.sequence->kv.length + static_cast<int64_t>(p.count));
    const Tensor logits = forward(plan);
    std::vector<float> host(static_cast<size_t>(logits.numel()));
    engine_.backend().to_host_f32(logits, host.data());
    ++steps_;
    const size_t vocab = static_cast<size_t>(logits.cols());
    for (size_t i = 0; i < plan.size(); ++i) {
      Sequence& s = *plan[i].sequence;
      offer_prompt_blocks(s);
      if (s.pending() == 0) sample_next(s, std::span<const float>(host).subspan(i * vocab, vocab));
    }
  } catch (const std::exception& e) {
    for (const Planned& p : plan) fail(*p.sequence, e.what());
  }
}

Tensor Scheduler::forward(const std::vector<Planned>& plan) {
  // A step of decode tokens only goes through Engine::decode (a captured graph on CUDA).
  const bool decode_only = std::all_of(plan.begin(), plan.end(), [](const Planned& p) {
    return p.count == 1 && !p.sequence->inputs[static_cast<size_t>(p.sequence->kv.length)].is_image();
  });
  if (decode_only) {
    std::vector<SequenceState*> sequences;
    std::vector<int32_t> tokens;
    for (const Planned& p : plan) {
      sequences.push_back(&p.sequence->kv);
      tokens.push_back(p.sequence->inputs[static_cast<size_t>(p.sequence->kv.length)].token);
    }
    return engine_.decode(sequences, tokens);
  }
  std::vector<SequenceChunk> chunks;
  for (const Planned& p : plan) {
    Sequence& s = *p.sequence;
    chunks.push_back({&s.kv, embed_inputs(s, static_cast<size_t>(s.kv.length), p.count)});
  }
  return engine_.step(chunks);
}

void Scheduler::offer_prompt_blocks(Sequence& s) {
  if (!options_.prefix_cache) return;
  const size_t written = std::min(static_cast<size_t>(s.kv.length) / static_cast<size_t>(refs_->block_size()),
                                  s.prompt_keys.size());
  for (size_t b = s.offered_blocks; b < written; ++b) prefix_->insert(s.prompt_keys[b], s.kv.block_table[b]);
  s.offered_blocks = std::max(s.offered_blocks, written);
}

// Mirrors Generation::State::next() (api_generation.cpp), the single-sequence path.
void Scheduler::sample_next(Sequence& s, std::span<const float> logits) {
  const int32_t token = s.sampler.sample(logits, s.context);
  const Clock::time_point now = Clock::now();
  if (observer_) {
    if (s.sampled_any) {
      observer_->on_next_token(seconds(now - s.last_token));
    } else {
      observer_->on_first_token(seconds(now - s.submitted));
    }
  }
  s.sampled_any = true;
  s.last_token = now;
  if (token == engine_.tokenizer().eos_id() && !s.request.ignore_eos)
    return finish(s, FinishReason::Eos, {}, std::nullopt);

  std::optional<GeneratedToken> record;
  if (s.request.top_logprobs >= 0) {
    record = token_logprobs(logits, token, s.request.top_logprobs);
  } else {
    record = GeneratedToken{token, std::nullopt, {}};
  }
  ++s.generated;
  s.context.push_back(token);
  s.inputs.push_back({token, -1});
  // Ids past the tokenizer's vocabulary (the embedding rows are padded to a multiple of 64)
  // have no text: Hugging Face's decode skips them, and so does the stream.
  const bool has_text = static_cast<size_t>(token) < engine_.tokenizer().vocab_size();
  std::string piece = s.stops.push(has_text ? s.detok.push(token) : std::string());
  if (s.stops.matched()) return finish(s, FinishReason::Stop, std::move(piece), std::move(record));
  if (s.generated >= s.request.max_tokens) return finish(s, FinishReason::Length, std::move(piece), std::move(record));
  s.stream->push(piece, std::move(record));
}

void Scheduler::finish(Sequence& s, FinishReason reason, std::string tail, std::optional<GeneratedToken> last) {
  // Unless a stop string cut the text, what the detokenizer and stop matcher hold is released.
  if (reason != FinishReason::Stop) tail += s.stops.push(s.detok.flush()) + s.stops.flush();
  if (!tail.empty() || last) s.stream->push(tail, std::move(last));
  GenerationOutcome outcome;
  outcome.reason = reason;
  outcome.prompt_tokens = static_cast<int>(s.prompt_positions);
  outcome.completion_tokens = s.generated;
  s.stream->finish(outcome);
  if (observer_) observer_->on_finished(outcome.prompt_tokens, outcome.completion_tokens);
  s.done = true;
}

void Scheduler::fail(Sequence& s, const std::string& message) {
  if (s.done) return;
  GenerationOutcome outcome;
  outcome.error = message;
  outcome.prompt_tokens = static_cast<int>(s.prompt_positions);
  outcome.completion_tokens = s.generated;
  s.stream->finish(outcome);
  s.done = true;
}

void Scheduler::retire_done() {
  for (auto& s : running_)
    if (s->done) refs_->release(s->kv.block_table);
  std::erase_if(running_, [](const std::unique_ptr<Sequence>& s) { return s->done; });
}

void Scheduler::publish_stats() {
  {
    std::lock_guard lock(mutex_);
    queued_.store(static_cast<int>(queue_.size()));
  }
  running_count_.store(static_cast<int>(running_.size()));
  free_blocks_.store(refs_->free_blocks());
  cached_blocks_.store(static_cast<int>(prefix_->size()));
}

}  // namespace moxin
