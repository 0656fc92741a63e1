// The public Generation iterator, and generate()'s kind of it: prefill on the caller's thread
// at the first step, then one decode per step, each token through the sequence core.
#include <chrono>

#include "core/check.hpp"
#include "moxin/moxin.hpp"
#include "runtime/api_convert.hpp"
#include "runtime/api_generation_state.hpp"
#include "runtime/sequence_core.hpp"
#include "runtime/session.hpp"

namespace moxin {

struct Generation::Direct final : Generation::State {
  Direct(Engine& engine, uint64_t max_pixels, const Prompt& p, const GenerateOptions& o, std::shared_ptr<void> l)
      : lease(std::move(l)), session(engine, max_pixels), prompt(p), options(to_sequence_options(o)) {}

  std::shared_ptr<void> lease;  // first: released after the session has freed its KV blocks
  Session session;
  Prompt prompt;
  SequenceOptions options;
  std::optional<SequenceCore> core;  // once the prompt's ids are known
  std::vector<float> logits;
  bool started = false;

  void prefill() {
    PrefillResult r = session.prefill(to_chat_turns(prompt), prompt.image);
    core.emplace(session.engine().tokenizer(), options, std::move(r.input_ids));
    logits = std::move(r.logits);
    timings.vision_ms = r.vision_ms;
    timings.prefill_ms = r.prefill_ms;
    timings.prompt_tokens = r.prompt_tokens;
  }

  std::optional<Piece> next() override {
    if (finish != FinishReason::None) return std::nullopt;
    if (!started) {
      started = true;
      if (options.max_tokens == 0) {  // nothing to compute
        finish = FinishReason::Length;
        return std::nullopt;
      }
      prefill();
    } else {
      const auto start = std::chrono::steady_clock::now();
      logits = session.decode(generated.back());
      timings.decode_ms +=
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    }
    TokenOutcome out = core->next(logits);
    if (out.record) generated.push_back(out.token);
    timings.generated_tokens = static_cast<int>(generated.size());
    text += out.text;
    finish = out.finish;
    // The last piece carries the last token (for EOS: the EOS id, never in tokens()).
    if (finish == FinishReason::Eos && out.text.empty()) return std::nullopt;
    return Piece{out.token, std::move(out.text)};
  }
};

Generation::Generation(std::unique_ptr<State> state) : state_(std::move(state)) {}
Generation::Generation(Generation&&) noexcept = default;
Generation& Generation::operator=(Generation&&) noexcept = default;
Generation::~Generation() = default;

std::optional<Piece> Generation::next() { return state_->next(); }
FinishReason Generation::finish_reason() const { return state_->finish; }
const std::vector<int32_t>& Generation::tokens() const { return state_->generated; }
std::string Generation::text() const { return state_->text; }
const Timings& Generation::timings() const { return state_->timings; }

Generation Model::generate(const Prompt& prompt, const GenerateOptions& options) {
  to_sequence_options(options).validate();
  std::shared_ptr<void> lease = try_lease_engine();
  if (!lease) return submit(prompt, options);  // the scheduler owns the engine now
  auto state = std::make_unique<Generation::Direct>(*engine_, options_.max_image_pixels, prompt, options,
                                                    std::move(lease));
  state->timings.load_ms = load_ms_;
  return Generation(std::move(state));
}

}  // namespace moxin
