// POST /v1/chat/completions bodies: parsed and checked field by field into what the scheduler
// needs. Everything the server cannot honour is refused with a 400 naming the field, never
// ignored silently (unknown fields too, as OpenAI does).
//
// Mapping decisions (the model has one prompt format, docs/model.md section 4):
//  - system (and developer) messages may only come first; their text is prepended to the first
//    user message, separated by a blank line. The model has no system prompt of its own.
//  - then user / assistant alternate, starting and ending with user: the multi-turn prompt.
//  - at most one image in the whole conversation (the model takes one, right after BOS), in a
//    user message; text parts of a message are joined with "\n".
//  - temperature defaults to 1 (as OpenAI); 0 is greedy. Without a seed, a random one.
//  - logprobs are the log-softmax of the raw logits (as OpenAI), not of the sampling
//    distribution after penalties, temperature and truncation.
//  - frequency_penalty / presence_penalty: only 0 (not implemented); repetition_penalty, top_k
//    and min_p are accepted as extensions (transformers semantics), and ignore_eos (vLLM's
//    benchmark switch: the answer runs to max_tokens).
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "runtime/prompt.hpp"
#include "runtime/sampler.hpp"

namespace moxin::server {

struct ChatRequest {
  std::vector<ChatTurn> turns;
  std::optional<std::string> image_url;
  std::optional<int64_t> max_tokens;  // absent: up to the context limit
  SamplingParams sampling;
  bool seeded = false;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;
  bool logprobs = false;
  int top_logprobs = 0;
  bool ignore_eos = false;
};

// Throws ApiError (400) naming the field at fault.
ChatRequest parse_chat_request(const nlohmann::json& body);

}  // namespace moxin::server
