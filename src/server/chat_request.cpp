#include "server/chat_request.hpp"

#include <cmath>
#include <limits>
#include <random>
#include <set>

#include "core/check.hpp"
#include "io/json_strict.hpp"
#include "server/api_error.hpp"

namespace moxin::server {
namespace {

using nlohmann::json;

// Fields that change nothing here but that clients send routinely.
const std::set<std::string> kIgnoredFields = {"model", "user", "metadata", "store", "service_tier",
                                              "safety_identifier", "prompt_cache_key"};

// null counts as absent, as in OpenAI's API.
const json* field(const json& object, const std::string& name) {
  auto it = object.find(name);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

double number_in(const json& body, const std::string& name, double fallback, double lo, double hi,
                 bool lo_open = false) {
  const json* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_number()) throw bad_request(cat("'", name, "' must be a number, got ", describe_json(*v)), name);
  const double x = v->get<double>();
  if (!std::isfinite(x) || (lo_open ? x <= lo : x < lo) || x > hi)
    throw bad_request(cat("'", name, "' must be in ", lo_open ? "(" : "[", lo, ", ", hi, "], got ", describe_json(*v)),
                      name);
  return x;
}

std::optional<int64_t> integer_in(const json& body, const std::string& name, int64_t lo, int64_t hi) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number_integer()) throw bad_request(cat("'", name, "' must be an integer, got ", describe_json(*v)), name);
  const bool too_big = v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(hi);
  const int64_t x = too_big ? hi : v->get<int64_t>();
  if (too_big || x < lo || x > hi)
    throw bad_request(cat("'", name, "' must be in [", lo, ", ", hi, "], got ", describe_json(*v)), name);
  return x;
}

bool boolean(const json& body, const std::string& name, bool fallback) {
  const json* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_boolean()) throw bad_request(cat("'", name, "' must be true or false, got ", describe_json(*v)), name);
  return v->get<bool>();
}

const std::string& string_at(const json& object, const std::string& name, const std::string& where) {
  const json* v = field(object, name);
  if (!v || !v->is_string()) throw bad_request(cat(where, ".", name, " must be a string"), where);
  return v->get_ref<const std::string&>();
}

struct Message {
  std::string role;
  std::string text;
  std::optional<std::string> image_url;
};

Message parse_message(const json& m, size_t index) {
  const std::string where = cat("messages[", index, "]");
  if (!m.is_object()) throw bad_request(cat(where, " must be an object, got ", describe_json(m)), where);
  Message out;
  out.role = string_at(m, "role", where);
  if (out.role == "tool" || out.role == "function")
    throw bad_request(cat(where, ": '", out.role, "' messages are not supported (this model has no tools)"), where);
  if (out.role != "system" && out.role != "developer" && out.role != "user" && out.role != "assistant")
    throw bad_request(cat(where, ".role must be system, user or assistant, got '", out.role, "'"), where);
  for (const auto& [key, value] : m.items()) {
    if (key == "role" || key == "content" || key == "name") continue;
    if ((key == "tool_calls" || key == "function_call" || key == "audio" || key == "refusal") && value.is_null()) continue;
    throw bad_request(cat(where, ": the field '", key, "' is not supported"), where);
  }

  const json* content = field(m, "content");
  if (!content) throw bad_request(cat(where, " has no content"), where);
  if (content->is_string()) {
    out.text = content->get<std::string>();
    return out;
  }
  if (!content->is_array())
    throw bad_request(cat(where, ".content must be a string or an array of content parts, got ", describe_json(*content)),
                      where);
  std::vector<std::string> texts;
  for (size_t p = 0; p < content->size(); ++p) {
    const json& part = (*content)[p];
    const std::string pwhere = cat(where, ".content[", p, "]");
    if (!part.is_object()) throw bad_request(cat(pwhere, " must be an object, got ", describe_json(part)), pwhere);
    const std::string& type = string_at(part, "type", pwhere);
    if (type == "text") {
      texts.push_back(string_at(part, "text", pwhere));
    } else if (type == "image_url") {
      if (out.role != "user") throw bad_request(cat(pwhere, ": only user messages may carry an image"), pwhere);
      const json* image = field(part, "image_url");
      if (!image || !image->is_object()) throw bad_request(cat(pwhere, ".image_url must be an object with a 'url'"), pwhere);
      if (out.image_url) throw bad_request(cat(where, " has more than one image; the model takes one image per conversation"), where);
      out.image_url = string_at(*image, "url", pwhere + ".image_url");
      if (const json* detail = field(*image, "detail"); detail && !detail->is_string())
        throw bad_request(cat(pwhere, ".image_url.detail must be a string"), pwhere);
    } else {
      throw bad_request(cat(pwhere, ": content parts of type '", type, "' are not supported (text and image_url are)"),
                        pwhere);
    }
  }
  for (size_t i = 0; i < texts.size(); ++i) out.text += (i ? "\n" : "") + texts[i];
  return out;
}

void parse_messages(const json& body, ChatRequest& out) {
  const json* messages = field(body, "messages");
  if (!messages) throw bad_request("'messages' is required", "messages");
  if (!messages->is_array()) throw bad_request(cat("'messages' must be an array, got ", describe_json(*messages)), "messages");
  if (messages->empty()) throw bad_request("'messages' must hold at least one user message", "messages");
  std::vector<Message> parsed;
  for (size_t i = 0; i < messages->size(); ++i) parsed.push_back(parse_message((*messages)[i], i));

  std::string system;
  size_t i = 0;
  for (; i < parsed.size() && (parsed[i].role == "system" || parsed[i].role == "developer"); ++i)
    system += (system.empty() ? "" : "\n\n") + parsed[i].text;
  if (i == parsed.size()) throw bad_request("'messages' has no user message", "messages");
  for (size_t j = i; j < parsed.size(); ++j) {
    const bool user_turn = (j - i) % 2 == 0;
    const std::string expected = user_turn ? "user" : "assistant";
    if (parsed[j].role != expected)
      throw bad_request(cat("messages[", j, "] is a ", parsed[j].role, " message where a ", expected,
                            " message belongs: after any system messages, user and assistant must alternate, "
                            "starting and ending with user"),
                        cat("messages[", j, "]"));
    if (parsed[j].image_url) {
      if (out.image_url)
        throw bad_request(cat("messages[", j, "] has a second image; the model takes one image per conversation"),
                          cat("messages[", j, "]"));
      out.image_url = parsed[j].image_url;
    }
    if (user_turn) {
      out.turns.push_back({parsed[j].text, {}});
    } else {
      out.turns.back().assistant = parsed[j].text;
    }
  }
  if (parsed.back().role != "user")
    throw bad_request("the last message must be the user's (the one to answer)", "messages");
  if (!system.empty()) out.turns.front().user = system + "\n\n" + out.turns.front().user;
}

void parse_stop(const json& body, ChatRequest& out) {
  const json* stop = field(body, "stop");
  if (!stop) return;
  if (stop->is_string()) {
    out.stop.push_back(stop->get<std::string>());
  } else if (stop->is_array()) {
    if (stop->size() > 4) throw bad_request(cat("'stop' holds at most 4 strings, got ", stop->size()), "stop");
    for (const json& s : *stop) {
      if (!s.is_string()) throw bad_request(cat("'stop' must hold strings, got ", describe_json(s)), "stop");
      out.stop.push_back(s.get<std::string>());
    }
  } else {
    throw bad_request(cat("'stop' must be a string or an array of strings, got ", describe_json(*stop)), "stop");
  }
  for (const std::string& s : out.stop)
    if (s.empty()) throw bad_request("'stop' strings must not be empty", "stop");
}

void refuse_unsupported(const json& body) {
  static const std::set<std::string> known = {
      "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop",
      "stream", "stream_options", "n", "logprobs", "top_logprobs", "frequency_penalty", "presence_penalty",
      "repetition_penalty", "top_k", "min_p", "ignore_eos"};
  for (const auto& [key, value] : body.items()) {
    if (known.count(key) || kIgnoredFields.count(key)) continue;
    const bool harmless = value.is_null() || (value.is_array() && value.empty()) ||
                          (key == "logit_bias" && value.is_object() && value.empty()) ||
                          (key == "tool_choice" && value == "none") ||
                          (key == "response_format" && value.is_object() && value.value("type", "") == "text") ||
                          (key == "modalities" && value == json::array({"text"}));
    if (harmless) continue;
    throw bad_request(cat("the request field '", key, "' is not supported by this server"), key);
  }
  if (const json* model = field(body, "model"); model && !model->is_string())
    throw bad_request(cat("'model' must be a string, got ", describe_json(*model)), "model");
}

}  // namespace

ChatRequest parse_chat_request(const json& body) {
  if (!body.is_object()) throw bad_request(cat("the request body must be a JSON object, got ", describe_json(body)));
  refuse_unsupported(body);
  ChatRequest out;
  parse_messages(body, out);

  constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();
  out.max_tokens = integer_in(body, "max_tokens", 1, kMaxInt);
  if (auto v = integer_in(body, "max_completion_tokens", 1, kMaxInt)) out.max_tokens = v;
  if (integer_in(body, "n", 1, kMaxInt).value_or(1) != 1)
    throw bad_request("'n' must be 1: this server returns one choice per request", "n");

  SamplingParams& p = out.sampling;
  p.temperature = static_cast<float>(number_in(body, "temperature", 1.0, 0.0, 2.0));
  p.top_p = static_cast<float>(number_in(body, "top_p", 1.0, 0.0, 1.0, /*lo_open=*/true));
  p.min_p = static_cast<float>(number_in(body, "min_p", 0.0, 0.0, 1.0));
  p.repetition_penalty = static_cast<float>(number_in(body, "repetition_penalty", 1.0, 0.0, 100.0, true));
  p.top_k = static_cast<int>(integer_in(body, "top_k", 0, kMaxInt).value_or(0));
  for (const char* penalty : {"frequency_penalty", "presence_penalty"})
    if (number_in(body, penalty, 0.0, -2.0, 2.0) != 0.0)
      throw bad_request(cat("'", penalty, "' is not implemented: only 0 is accepted (repetition_penalty is)"), penalty);
  if (const json* seed = field(body, "seed")) {
    if (!seed->is_number_integer()) throw bad_request(cat("'seed' must be an integer, got ", describe_json(*seed)), "seed");
    p.seed = seed->is_number_unsigned() ? seed->get<uint64_t>() : static_cast<uint64_t>(seed->get<int64_t>());
    out.seeded = true;
  } else {
    p.seed = (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
  }
  try {
    p.validate();
  } catch (const Error& e) {
    throw bad_request(e.what());
  }

  parse_stop(body, out);
  out.stream = boolean(body, "stream", false);
  if (const json* options = field(body, "stream_options")) {
    if (!out.stream) throw bad_request("'stream_options' is only allowed with \"stream\": true", "stream_options");
    if (!options->is_object()) throw bad_request("'stream_options' must be an object", "stream_options");
    for (const auto& [key, value] : options->items())
      if (key != "include_usage") throw bad_request(cat("stream_options.", key, " is not supported"), "stream_options");
    out.include_usage = boolean(*options, "include_usage", false);
  }
  out.ignore_eos = boolean(body, "ignore_eos", false);
  out.logprobs = boolean(body, "logprobs", false);
  if (auto top = integer_in(body, "top_logprobs", 0, 20)) {
    if (!out.logprobs) throw bad_request("'top_logprobs' needs \"logprobs\": true", "top_logprobs");
    out.top_logprobs = static_cast<int>(*top);
  }
  return out;
}

}  // namespace moxin::server
