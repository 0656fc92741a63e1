// The JSON the server answers chat completions with: the whole completion object, or the
// server-sent-event chunks of a stream (OpenAI's chat.completion(.chunk) shapes).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/request_stream.hpp"
#include "text/tokenizer.hpp"

namespace moxin::server {

class ChatResponder {
 public:
  ChatResponder(const Tokenizer& tokenizer, std::string model, bool logprobs, bool include_usage);

  // Non-streaming: the chat.completion object.
  nlohmann::json completion(const std::string& text, const std::vector<GeneratedToken>& tokens,
                            const GenerationOutcome& outcome) const;

  // Streaming: the SSE events ("data: {...}\n\n") for the start, an update, the end.
  std::string stream_start() const;
  std::string stream_update(const std::string& text, const std::vector<GeneratedToken>& tokens) const;
  std::string stream_end(const GenerationOutcome& outcome) const;  // finish chunk, usage, [DONE]

 private:
  nlohmann::json chunk(nlohmann::json delta, nlohmann::json finish_reason,
                       const std::vector<GeneratedToken>* tokens) const;
  nlohmann::json logprobs_json(const std::vector<GeneratedToken>& tokens) const;
  nlohmann::json token_json(int32_t token, float logprob) const;
  std::string token_text(int32_t token) const;

  const Tokenizer& tokenizer_;
  std::string model_;
  bool logprobs_;
  bool include_usage_;
  std::string id_;
  int64_t created_;
  std::vector<int32_t> probe_;  // a plain token decoded before another to keep its leading space
  std::string probe_text_;
};

nlohmann::json usage_json(const GenerationOutcome& outcome);
const char* finish_reason_name(FinishReason reason);
std::string sse_event(const nlohmann::json& payload);

}  // namespace moxin::server
