// Log-probabilities reported with generated tokens: the log-softmax of the model's raw logits
// (before the repetition penalty, temperature and truncation), as OpenAI's API reports them.
#pragma once

#include <cstdint>
#include <span>

#include "runtime/request_stream.hpp"

namespace moxin {

// The token's log-probability and the `top` most likely tokens' (ties: lower id first).
GeneratedToken token_logprobs(std::span<const float> logits, int32_t token, int top);

}  // namespace moxin
