// The streaming machinery: stop strings over text pieces, and the SSE chunks made of what they
// release. Input = stop strings (LF-separated) NUL pieces (0x01-separated). Checked: what is
// released is the text up to the first completed stop string (all of it without a match), and
// every SSE event is one JSON object.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "moxin/error.hpp"
#include "runtime/stop_matcher.hpp"
#include "server/chat_response.hpp"

namespace {

std::vector<std::string> split(std::string_view text, char separator) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t i = 0; i <= text.size(); ++i) {
    if (i == text.size() || text[i] == separator) {
      parts.emplace_back(text.substr(start, i - start));
      start = i + 1;
    }
  }
  return parts;
}

void check_sse(const std::string& events) {
  for (const std::string& line : split(events, '\n')) {
    if (line.empty() || line == "data: [DONE]") continue;
    if (line.rfind("data: ", 0) != 0) __builtin_trap();
    if (!nlohmann::json::parse(line.substr(6)).is_object()) __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moxin;
  const auto [stop_text, piece_text] = fuzz::split_at_nul(fuzz::as_text(data, size));
  std::vector<std::string> stops;
  for (std::string& s : split(stop_text, '\n'))
    if (!s.empty()) stops.push_back(std::move(s));
  if (stops.empty()) return 0;
  StopMatcher matcher(stops);
  server::ChatResponder responder(fuzz::seed_tokenizer(), "fuzz", false, true);
  std::string fed, released;
  for (const std::string& piece : split(piece_text, '\x01')) {
    fed += piece;
    const std::string out = matcher.push(piece);
    released += out;
    check_sse(responder.stream_update(out, {}));
  }
  if (!matcher.matched()) released += matcher.flush();
  if (matcher.matched()) {
    // The release ends exactly where a stop string starts.
    bool found = false;
    for (const std::string& stop : stops) found = found || fed.compare(released.size(), stop.size(), stop) == 0;
    if (!found || fed.compare(0, released.size(), released) != 0) __builtin_trap();
  } else if (released != fed) {
    __builtin_trap();
  }
  GenerationOutcome outcome;
  outcome.reason = matcher.matched() ? FinishReason::Stop : FinishReason::Length;
  check_sse(responder.stream_end(outcome));
  return 0;
}
