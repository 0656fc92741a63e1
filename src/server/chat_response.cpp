#include "server/chat_response.hpp"

#include <chrono>
#include <random>

namespace moxin::server {
namespace {

using nlohmann::json;

std::string completion_id() {
  thread_local std::mt19937_64 rng{(static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = "chatcmpl-";
  for (int i = 0; i < 24; ++i) id.push_back(kHex[rng() & 15]);
  return id;
}

// Replaces invalid UTF-8 (a lone byte-fallback token) so the JSON can be written.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace

const char* finish_reason_name(FinishReason reason) {
  return reason == FinishReason::Length ? "length" : "stop";
}

json usage_json(const GenerationOutcome& o) {
  return {{"prompt_tokens", o.prompt_tokens},
          {"completion_tokens", o.completion_tokens},
          {"total_tokens", o.prompt_tokens + o.completion_tokens}};
}

std::string sse_event(const json& payload) { return "data: " + dump(payload) + "\n\n"; }

ChatResponder::ChatResponder(const Tokenizer& tokenizer, std::string model, bool logprobs, bool include_usage)
    : tokenizer_(tokenizer),
      model_(std::move(model)),
      logprobs_(logprobs),
      include_usage_(include_usage),
      id_(completion_id()),
      created_(std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
                   .count()) {
  if (logprobs_) {
    probe_ = tokenizer_.encode("a", /*add_bos=*/false);
    probe_text_ = tokenizer_.decode(probe_, false);
  }
}

// A token's own text. Decoded alone, the decoder would strip the leading space a
// SentencePiece token carries ("▁the" -> "the"); decoded after a plain probe token it keeps it.
std::string ChatResponder::token_text(int32_t token) const {
  if (token < 0 || static_cast<size_t>(token) >= tokenizer_.vocab_size()) return {};  // padding rows: no text
  if (probe_.empty()) return tokenizer_.decode(std::vector<int32_t>{token}, false);
  std::vector<int32_t> ids = probe_;
  ids.push_back(token);
  const std::string text = tokenizer_.decode(ids, false);
  return text.rfind(probe_text_, 0) == 0 ? text.substr(probe_text_.size())
                                          : tokenizer_.decode(std::vector<int32_t>{token}, false);
}

json ChatResponder::token_json(int32_t token, float logprob) const {
  const std::string text = token_text(token);
  json bytes = json::array();
  for (unsigned char c : text) bytes.push_back(static_cast<int>(c));
  return {{"token", text}, {"logprob", logprob}, {"bytes", bytes}};
}

json ChatResponder::logprobs_json(const std::vector<GeneratedToken>& tokens) const {
  json content = json::array();
  for (const GeneratedToken& t : tokens) {
    json entry = token_json(t.token, t.logprob.value_or(0.0f));
    json top = json::array();
    for (const TokenLogprob& alt : t.top) top.push_back(token_json(alt.token, alt.logprob));
    entry["top_logprobs"] = std::move(top);
    content.push_back(std::move(entry));
  }
  return {{"content", std::move(content)}, {"refusal", nullptr}};
}

json ChatResponder::completion(const std::string& text, const std::vector<GeneratedToken>& tokens,
                               const GenerationOutcome& outcome) const {
  json choice = {{"index", 0},
                 {"message", {{"role", "assistant"}, {"content", text}, {"refusal", nullptr}}},
                 {"logprobs", logprobs_ ? logprobs_json(tokens) : json()},
                 {"finish_reason", finish_reason_name(outcome.reason)}};
  return {{"id", id_},
          {"object", "chat.completion"},
          {"created", created_},
          {"model", model_},
          {"choices", json::array({std::move(choice)})},
          {"usage", usage_json(outcome)}};
}

json ChatResponder::chunk(json delta, json finish_reason, const std::vector<GeneratedToken>* tokens) const {
  json choice = {{"index", 0},
                 {"delta", std::move(delta)},
                 {"logprobs", logprobs_ && tokens ? logprobs_json(*tokens) : json()},
                 {"finish_reason", std::move(finish_reason)}};
  json out = {{"id", id_},
              {"object", "chat.completion.chunk"},
              {"created", created_},
              {"model", model_},
              {"choices", json::array({std::move(choice)})}};
  if (include_usage_) out["usage"] = nullptr;
  return out;
}

std::string ChatResponder::stream_start() const {
  return sse_event(chunk({{"role", "assistant"}, {"content", ""}}, nullptr, nullptr));
}

std::string ChatResponder::stream_update(const std::string& text, const std::vector<GeneratedToken>& tokens) const {
  if (text.empty() && (!logprobs_ || tokens.empty())) return {};
  return sse_event(chunk({{"content", text}}, nullptr, &tokens));
}

std::string ChatResponder::stream_end(const GenerationOutcome& outcome) const {
  std::string out = sse_event(chunk(json::object(), finish_reason_name(outcome.reason), nullptr));
  if (include_usage_) {
    json usage = {{"id", id_},          {"object", "chat.completion.chunk"}, {"created", created_},
                  {"model", model_},    {"choices", json::array()},         {"usage", usage_json(outcome)}};
    out += sse_event(usage);
  }
  return out + "data: [DONE]\n\n";
}

}  // namespace moxin::server
