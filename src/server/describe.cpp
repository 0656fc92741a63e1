#include "server/describe.hpp"

#include <optional>

#include "core/check.hpp"
#include "io/json_strict.hpp"
#include "runtime/default_prompt.hpp"
#include "server/api_error.hpp"
#include "server/base64.hpp"

namespace moxin::server {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr int kDefaultMaxTokens = 256;  // the seed's default
constexpr double kDefaultTemperature = 0.0;

const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

const std::string& image_field(const json& body) {
  const json* image = field(body, "image");
  if (!image) throw bad_request("'image' is required: the image file's bytes as base64", "image");
  if (!image->is_string())
    throw bad_request(cat("'image' must be a base64 string, got ", describe_json(*image)), "image");
  const std::string& text = image->get_ref<const std::string&>();
  const auto bytes = decode_base64(text);
  if (!bytes) throw bad_request("'image' is not valid base64 (standard alphabet, with padding)", "image");
  if (bytes->empty()) throw bad_request("'image' is empty", "image");
  return text;
}

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

ChatRequest parse_describe_request(const json& body) {
  if (!body.is_object()) throw bad_request(cat("the request body must be a JSON object, got ", describe_json(body)));
  for (const auto& [key, value] : body.items())
    if (key != "image" && key != "prompt" && key != "max_tokens" && key != "temperature")
      throw bad_request(cat("unknown field '", key, "' (POST /v1/describe takes image, prompt, max_tokens, temperature)"),
                        key);
  std::string prompt = kDefaultImagePrompt;
  if (const json* p = field(body, "prompt")) {
    if (!p->is_string()) throw bad_request(cat("'prompt' must be a string, got ", describe_json(*p)), "prompt");
    prompt = p->get<std::string>();
  }
  // The chat route's parser checks max_tokens and temperature (same names, same rules) and the
  // prompt; the image travels as the data URL it decodes.
  const json image_part = {{"type", "image_url"}, {"image_url", {{"url", "data:image/*;base64," + image_field(body)}}}};
  const json text_part = {{"type", "text"}, {"text", prompt}};
  const json message = {{"role", "user"}, {"content", json::array({image_part, text_part})}};
  json chat = {{"messages", json::array({message})},
               {"max_tokens", kDefaultMaxTokens},
               {"temperature", kDefaultTemperature}};
  for (const char* name : {"max_tokens", "temperature"})
    if (const json* v = field(body, name)) chat[name] = *v;
  return parse_chat_request(chat);
}

json describe_response(RequestStream& stream, Clock::time_point submitted) {
  std::string text;
  std::optional<Clock::time_point> first_token;
  for (;;) {
    RequestStream::Update update = stream.next(std::chrono::seconds(1));
    if (!first_token && !update.tokens.empty()) first_token = Clock::now();
    text += update.text;
    if (!update.outcome) continue;
    if (!update.outcome->error.empty()) throw ApiError(500, update.outcome->error, "", "server_error");
    const Clock::time_point end = Clock::now();
    const Clock::time_point first = first_token.value_or(end);  // an answer of no tokens: all prefill
    const int tokens = update.outcome->completion_tokens;
    const double prefill_ms = 1000.0 * seconds_between(submitted, first);
    const double decode_s = seconds_between(first, end);
    return {{"description", text},
            {"tokens", tokens},
            {"prefill_ms", prefill_ms},
            {"tokens_per_second", tokens > 1 && decode_s > 0 ? (tokens - 1) / decode_s : 0.0}};
  }
}

}  // namespace moxin::server
