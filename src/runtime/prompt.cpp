#include "runtime/prompt.hpp"

#include <string_view>

#include "core/check.hpp"
#include "text/tokenizer.hpp"

namespace moxin {
namespace {

constexpr std::string_view kWhitespace = " \t\n\r\f\v";
constexpr std::string_view kSeparator = "</s>";

std::string strip(std::string_view s) {
  const size_t begin = s.find_first_not_of(kWhitespace);
  if (begin == std::string_view::npos) return {};
  const size_t end = s.find_last_not_of(kWhitespace);
  return std::string(s.substr(begin, end - begin + 1));
}

std::string remove_image_tags(std::string s) {
  for (size_t at = s.find("<image>"); at != std::string::npos; at = s.find("<image>", at))
    s.erase(at, 7);
  return s;
}

std::string clean(const std::string& message) { return strip(remove_image_tags(message)); }

// The prompt as segments between EOS separators; joined with "</s>" it is format_prompt().
std::vector<std::string> prompt_segments(const std::vector<ChatTurn>& turns) {
  MOXIN_CHECK(!turns.empty(), "[prompt] a prompt needs at least one user message");
  std::vector<std::string> segments(1);
  for (size_t i = 0; i < turns.size(); ++i) {
    const bool last = i + 1 == turns.size();
    // append() rather than operator+ chains: g++ 12 reports a false -Wrestrict on those.
    segments.back().append("In: ").append(clean(turns[i].user)).append("\nOut:");
    if (!last) {
      // Prismatic writes an empty answer as a single space.
      const std::string answer = clean(turns[i].assistant);
      segments.back().append(" ").append(answer.empty() ? " " : answer);
      segments.emplace_back();
    } else {
      MOXIN_CHECK(turns[i].assistant.empty(),
                  "[prompt] the last turn must be the user's question (it has an answer already)");
    }
  }
  // The whole prompt is right-stripped; only the final segment can end in whitespace.
  segments.back() = segments.back().substr(0, segments.back().find_last_not_of(kWhitespace) + 1);
  return segments;
}

}  // namespace

std::string format_prompt(const std::vector<ChatTurn>& turns) {
  std::string prompt;
  const auto segments = prompt_segments(turns);
  for (size_t i = 0; i < segments.size(); ++i) {
    if (i > 0) prompt.append(kSeparator);
    prompt.append(segments[i]);
  }
  return prompt;
}

std::vector<int32_t> tokenize_prompt(const Tokenizer& tokenizer, const std::vector<ChatTurn>& turns) {
  std::vector<int32_t> ids{tokenizer.bos_id()};
  const auto segments = prompt_segments(turns);
  for (size_t i = 0; i < segments.size(); ++i) {
    if (i > 0) ids.push_back(tokenizer.eos_id());
    const auto piece = tokenizer.encode(segments[i], /*add_bos=*/false, /*parse_special=*/false);
    ids.insert(ids.end(), piece.begin(), piece.end());
  }
  return ids;
}

}  // namespace moxin
