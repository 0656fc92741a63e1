// The channel between one request's HTTP thread and the scheduler thread: the scheduler pushes
// text pieces, sampled tokens and, once, the outcome; the HTTP thread takes whatever has
// accumulated (so a slow reader never stalls the scheduler) and may cancel the request.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "moxin/moxin.hpp"

namespace moxin {

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
};

// A generated token; the log-probabilities only when the request asked for them.
struct GeneratedToken {
  int32_t token = 0;
  std::optional<float> logprob;
  std::vector<TokenLogprob> top;  // most likely first
};

struct GenerationOutcome {
  FinishReason reason = FinishReason::None;  // None with an error message: it failed
  std::string error;
  int prompt_tokens = 0;      // text tokens with BOS + image tokens
  int completion_tokens = 0;  // generated tokens, the end-of-sequence token not counted
};

class RequestStream {
 public:
  struct Update {
    std::string text;
    std::vector<GeneratedToken> tokens;
    std::optional<GenerationOutcome> outcome;  // set in the last update only
    bool empty() const { return text.empty() && tokens.empty() && !outcome; }
  };

  // HTTP side. Waits up to `timeout` for news and returns everything since the last call.
  Update next(std::chrono::milliseconds timeout);
  // The client went away: the scheduler frees the request's slot at its next step.
  void cancel() { cancelled_.store(true); }

  // Scheduler side.
  bool cancelled() const { return cancelled_.load(); }
  void push(const std::string& text, std::optional<GeneratedToken> token);
  void finish(GenerationOutcome outcome);

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  Update pending_;
  bool delivered_outcome_ = false;
  std::atomic<bool> cancelled_{false};
};

}  // namespace moxin
