// Model::submit(): generations computed by the model's scheduler (the server's continuous
// batching), read through the public Generation iterator.
#include <chrono>
#include <deque>

#include "core/check.hpp"
#include "moxin/moxin.hpp"
#include "runtime/api_convert.hpp"
#include "runtime/api_generation_state.hpp"
#include "runtime/scheduler.hpp"

namespace moxin {
namespace {

using Clock = std::chrono::steady_clock;

double ms_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

}  // namespace

struct Generation::Scheduled final : Generation::State {
  Scheduled(std::shared_ptr<RequestStream> s, int32_t eos) : stream(std::move(s)), eos_id(eos) {}
  // Dropped before its end: the scheduler frees its slot at the next step.
  ~Scheduled() override { stream->cancel(); }

  std::shared_ptr<RequestStream> stream;
  int32_t eos_id;
  std::deque<Piece> ready;  // received, not yet returned by next()
  bool ended = false;
  Clock::time_point submitted = Clock::now();
  std::optional<Clock::time_point> first_token;

  std::optional<Piece> next() override {
    while (ready.empty()) {
      if (ended) return std::nullopt;
      take(stream->next(std::chrono::seconds(1)));
    }
    Piece piece = std::move(ready.front());
    ready.pop_front();
    return piece;
  }

  // The stream merges what arrived since the last look: its text goes with the last token in
  // it, or (the text released by an ending EOS) with the EOS id, as generate()'s last piece.
  void take(RequestStream::Update update) {
    const Clock::time_point now = Clock::now();
    if (!update.tokens.empty()) {
      if (!first_token) first_token = now;
      timings.prefill_ms = ms_between(submitted, *first_token);
      timings.decode_ms = ms_between(*first_token, now);
    }
    for (const GeneratedToken& t : update.tokens) {
      generated.push_back(t.token);
      ready.push_back({t.token, {}});
    }
    if (!update.text.empty()) {
      if (update.tokens.empty()) ready.push_back({eos_id, {}});
      ready.back().text = update.text;
      text += update.text;
    }
    timings.generated_tokens = static_cast<int>(generated.size());
    if (!update.outcome) return;
    ended = true;
    MOXIN_CHECK(update.outcome->error.empty(), update.outcome->error);
    finish = update.outcome->reason;
    timings.prompt_tokens = update.outcome->prompt_tokens;
  }
};

Scheduler& Model::scheduler() {
  std::lock_guard lock(use_mutex_);
  MOXIN_CHECK(leases_ == 0, "[submit] refused: ", leases_,
              " Generation(s) from generate() or Conversation(s) are still alive on this model and use its "
              "engine on their own threads; finish or drop them before the first submit()");
  if (!scheduler_) scheduler_ = std::make_unique<Scheduler>(*engine_, SchedulerOptions{});
  return *scheduler_;
}

Generation Model::submit(const Prompt& prompt, const GenerateOptions& options) {
  GenerationRequest request;
  static_cast<SequenceOptions&>(request) = to_sequence_options(options);
  request.validate();
  request.prompt_ids = tokenize_prompt(engine_->tokenizer(), to_chat_turns(prompt));
  if (!prompt.image.empty())
    request.image = prepare_request_image(prompt.image, options_.max_image_pixels, engine_->config().dino.image_size,
                                          "the prompt's image");
  std::shared_ptr<RequestStream> stream = scheduler().submit(std::move(request));
  MOXIN_CHECK(stream, "[submit] refused: ", SchedulerOptions{}.max_queue,
              " generations are already waiting; read some to their end first");
  auto state = std::make_unique<Generation::Scheduled>(std::move(stream), engine_->tokenizer().eos_id());
  state->timings.load_ms = load_ms_;
  return Generation(std::move(state));
}

}  // namespace moxin
