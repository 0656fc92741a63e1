// One generation's per-token rules, the same for every caller (the library's Generation, the
// server's scheduler): sample the next token from the logits, detokenize it incrementally,
// hold back text that may start a stop string, and decide whether the generation ends (the
// end-of-sequence token, a stop string, the token limit).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.hpp"
#include "runtime/request_stream.hpp"
#include "runtime/sampler.hpp"
#include "runtime/stop_matcher.hpp"
#include "text/tokenizer.hpp"

namespace moxin {

// How a generation samples and ends.
struct SequenceOptions {
  SamplingParams sampling;
  int max_tokens = 256;
  std::vector<std::string> stop;  // non-empty strings
  int top_logprobs = -1;          // < 0: no log-probabilities; else this many alternatives
  bool ignore_eos = false;        // benchmarks: the end-of-sequence token does not end it

  // Throws moxin::Error naming the first bad field.
  void validate() const;
};

// What one sampled token did.
struct TokenOutcome {
  int32_t token = 0;
  // The text this token released. When it ends the generation (finish != None), also what was
  // held back, unless a stop string matched (then the stop string and what follows are cut).
  std::string text;
  std::optional<GeneratedToken> record;  // the generated token; nullopt for an ending EOS
  FinishReason finish = FinishReason::None;
};

class SequenceCore {
 public:
  // prompt_ids: the prompt's token ids (the repetition penalty's context). A generation of
  // max_tokens 0 ends before its prompt is computed, so it never calls next().
  SequenceCore(const Tokenizer& tokenizer, const SequenceOptions& options, std::vector<int32_t> prompt_ids);

  // Samples from the logits of the sequence's last position and applies the rules.
  TokenOutcome next(std::span<const float> logits);

  // next() in two halves, for a sampler on the device (Backend::sample_tokens): draw() gives
  // this step's parameters, its uniform number (drawn now; greedy draws none) and the
  // context's distinct ids for the penalty; accept() applies the rules to the token drawn from
  // them, or next_at() samples the logits on the host with that number. A generation that
  // reports log-probabilities needs the logits on the host (wants_logits(); not accept()).
  bool wants_logits() const { return top_logprobs_ >= 0; }
  TokenDraw draw();
  TokenOutcome accept(int32_t token);
  TokenOutcome next_at(std::span<const float> logits, const TokenDraw& draw);

  // Whether the next token ends the generation by count, whatever it is.
  bool next_is_last() const { return static_cast<int>(generated().size()) + 1 >= max_tokens_; }
  // Generated ids so far (an ending EOS not included).
  std::span<const int32_t> generated() const {
    return std::span<const int32_t>(context_).subspan(prompt_length_);
  }

 private:
  // The rules after sampling; `logits` only where log-probabilities are reported.
  TokenOutcome advance(int32_t token, std::span<const float> logits);
  TokenOutcome finish(FinishReason reason, int32_t token, std::string text, std::optional<GeneratedToken> record);
  void remember(int32_t token);  // appends to the context (and its distinct ids)

  const Tokenizer& tokenizer_;
  int max_tokens_;
  int top_logprobs_;
  bool ignore_eos_;
  Sampler sampler_;
  StreamDecoder detok_;
  StopMatcher stops_;
  std::vector<int32_t> context_;  // prompt ids + generated ids, for the repetition penalty
  // With the penalty on: the context's distinct ids, and which ids are among them.
  std::vector<int32_t> distinct_;
  std::vector<uint8_t> seen_;
  size_t prompt_length_;
};

}  // namespace moxin
