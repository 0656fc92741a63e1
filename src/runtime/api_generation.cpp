// The public Generation iterator: prefill on the first step, then one token per step, with
// sampling, streaming detokenization and stop strings.
#include <chrono>

#include "core/check.hpp"
#include "moxin/moxin.hpp"
#include "runtime/api_convert.hpp"
#include "runtime/session.hpp"
#include "runtime/stop_matcher.hpp"
#include "text/tokenizer.hpp"

namespace moxin {

struct Generation::State {
  State(Engine& engine, uint64_t max_pixels, const Prompt& p, const GenerateOptions& o)
      : session(engine, max_pixels),
        prompt(p),
        options(o),
        sampler(to_sampling_params(o)),
        detok(engine.tokenizer()),
        stops(o.stop) {}

  Session session;
  Prompt prompt;
  GenerateOptions options;
  Sampler sampler;
  StreamDecoder detok;
  StopMatcher stops;
  std::vector<int32_t> context;  // prompt ids + generated ids (repetition penalty)
  std::vector<int32_t> generated;
  std::vector<float> logits;
  std::string text;
  FinishReason finish = FinishReason::None;
  Timings timings;
  bool started = false;

  void prefill() {
    PrefillResult r = session.prefill(to_chat_turns(prompt), prompt.image);
    context = r.input_ids;
    logits = std::move(r.logits);
    timings.vision_ms = r.vision_ms;
    timings.prefill_ms = r.prefill_ms;
    timings.prompt_tokens = r.prompt_tokens;
  }

  // Ends the generation. `tail` is the text released by the last token; unless a stop string
  // matched, whatever the detokenizer and the stop matcher still hold is released too.
  // The last piece carries the last generated token (for EOS: the EOS id, never in tokens()).
  std::optional<Piece> finish_with(FinishReason reason, int32_t token, std::string tail) {
    finish = reason;
    if (reason != FinishReason::Stop) tail += stops.push(detok.flush()) + stops.flush();
    text += tail;
    if (reason == FinishReason::Eos && tail.empty()) return std::nullopt;
    return Piece{token, std::move(tail)};
  }

  std::optional<Piece> next() {
    if (finish != FinishReason::None) return std::nullopt;
    if (!started) {
      started = true;
      if (options.max_tokens == 0) {
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
    const int32_t token = sampler.sample(logits, context);
    if (token == session.engine().tokenizer().eos_id()) return finish_with(FinishReason::Eos, token, {});
    generated.push_back(token);
    context.push_back(token);
    timings.generated_tokens = static_cast<int>(generated.size());
    // The embedding is padded past the tokenizer (32064 rows for 32001 pieces); a padding id
    // has no text, as Hugging Face's decode skips it.
    const bool has_text = static_cast<size_t>(token) < session.engine().tokenizer().vocab_size();
    std::string piece = stops.push(has_text ? detok.push(token) : std::string());
    if (stops.matched()) return finish_with(FinishReason::Stop, token, std::move(piece));
    if (static_cast<int>(generated.size()) >= options.max_tokens)
      return finish_with(FinishReason::Length, token, std::move(piece));
    text += piece;
    return Piece{token, std::move(piece)};
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
  MOXIN_CHECK(options.max_tokens >= 0, "[generate] max_tokens must be >= 0, got ", options.max_tokens);
  to_sampling_params(options).validate();
  auto state = std::make_unique<Generation::State>(*engine_, options_.max_image_pixels, prompt, options);
  state->timings.load_ms = load_ms_;
  return Generation(std::move(state));
}

}  // namespace moxin
