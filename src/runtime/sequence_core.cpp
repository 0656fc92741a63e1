#include "runtime/sequence_core.hpp"

#include "core/check.hpp"
#include "runtime/token_logprobs.hpp"

namespace moxin {

void SequenceOptions::validate() const {
  sampling.validate();
  MOXIN_CHECK(max_tokens >= 0, "[generate] max_tokens must be >= 0, got ", max_tokens);
  for (const std::string& s : stop) MOXIN_CHECK(!s.empty(), "[generate] stop strings must not be empty");
}

SequenceCore::SequenceCore(const Tokenizer& tokenizer, const SequenceOptions& options, std::vector<int32_t> prompt_ids)
    : tokenizer_(tokenizer),
      max_tokens_(options.max_tokens),
      top_logprobs_(options.top_logprobs),
      ignore_eos_(options.ignore_eos),
      sampler_(options.sampling),
      detok_(tokenizer),
      stops_(options.stop),
      prompt_length_(prompt_ids.size()) {
  context_.reserve(prompt_ids.size());
  for (const int32_t id : prompt_ids) remember(id);
}

void SequenceCore::remember(int32_t token) {
  context_.push_back(token);
  if (sampler_.params().repetition_penalty == 1.0f || token < 0) return;  // the sampler refuses < 0
  const auto id = static_cast<size_t>(token);
  if (id >= seen_.size()) seen_.resize(id + 1, 0);
  if (!seen_[id]) distinct_.push_back(token);
  seen_[id] = 1;
}

TokenDraw SequenceCore::draw() {
  const SamplingParams& p = sampler_.params();
  TokenDraw d{p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty, 0.0, {}};
  if (!p.greedy()) d.uniform = sampler_.draw();
  if (p.repetition_penalty != 1.0f) d.penalized = distinct_;
  return d;
}

TokenOutcome SequenceCore::accept(int32_t token) {
  MOXIN_CHECK(!wants_logits(), "[generate] a generation reporting log-probabilities samples from host logits");
  return advance(token, {});
}

TokenOutcome SequenceCore::next(std::span<const float> logits) { return next_at(logits, draw()); }

TokenOutcome SequenceCore::next_at(std::span<const float> logits, const TokenDraw& draw) {
  return advance(sampler_.sample_at(logits, context_, draw.uniform), logits);
}

TokenOutcome SequenceCore::advance(int32_t token, std::span<const float> logits) {
  if (token == tokenizer_.eos_id() && !ignore_eos_) return finish(FinishReason::Eos, token, {}, std::nullopt);

  GeneratedToken record =
      top_logprobs_ >= 0 ? token_logprobs(logits, token, top_logprobs_) : GeneratedToken{token, std::nullopt, {}};
  remember(token);
  // Ids past the tokenizer's vocabulary (the embedding rows are padded to a multiple of 64)
  // have no text: Hugging Face's decode skips them, and so does the stream.
  const bool has_text = static_cast<size_t>(token) < tokenizer_.vocab_size();
  std::string piece = stops_.push(has_text ? detok_.push(token) : std::string());
  if (stops_.matched()) return finish(FinishReason::Stop, token, std::move(piece), std::move(record));
  if (static_cast<int>(generated().size()) >= max_tokens_)
    return finish(FinishReason::Length, token, std::move(piece), std::move(record));
  return {token, std::move(piece), std::move(record), FinishReason::None};
}

TokenOutcome SequenceCore::finish(FinishReason reason, int32_t token, std::string text,
                                  std::optional<GeneratedToken> record) {
  // Unless a stop string cut the text, what the detokenizer and stop matcher hold is released.
  if (reason != FinishReason::Stop) text += stops_.push(detok_.flush()) + stops_.flush();
  return {token, std::move(text), std::move(record), reason};
}

}  // namespace moxin
