#include "runtime/stop_matcher.hpp"

#include <algorithm>

#include "core/check.hpp"

namespace moxin {
namespace {

bool is_continuation_byte(unsigned char b) { return (b & 0xC0) == 0x80; }

// Length of the UTF-8 sequence a lead byte announces; 1 for ASCII and for invalid bytes, which
// are released as they are (holding them would not make them valid).
size_t sequence_length(unsigned char lead) {
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 1;
}

// Where text[0, end) would cut a UTF-8 character short: the start of that character, else end.
size_t complete_utf8_prefix(std::string_view text, size_t end) {
  const size_t lowest = end >= 4 ? end - 4 : 0;
  for (size_t q = end; q > lowest; --q) {
    const auto b = static_cast<unsigned char>(text[q - 1]);
    if (is_continuation_byte(b)) continue;
    return q - 1 + sequence_length(b) > end ? q - 1 : end;
  }
  return end;
}

}  // namespace

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  for (size_t i = 0; i < stops_.size(); ++i)
    MOXIN_CHECK(!stops_[i].empty(), "[stop] stop string #", i,
                " is empty: it would match before any text; remove it");
}

size_t StopMatcher::first_completed_stop(size_t fresh) const {
  // held_ had no complete stop before the fresh bytes, so any match ends inside them.
  const size_t old = held_.size() - fresh;
  size_t best_start = std::string::npos, best_end = std::string::npos;
  for (const std::string& stop : stops_) {
    const size_t from = old + 1 > stop.size() ? old + 1 - stop.size() : 0;
    const size_t start = held_.find(stop, from);
    if (start == std::string::npos) continue;
    const size_t end = start + stop.size();
    if (end < best_end || (end == best_end && start < best_start)) {
      best_start = start;
      best_end = end;
    }
  }
  return best_start;
}

size_t StopMatcher::pending_length() const {
  const std::string_view text = held_;
  size_t release = text.size();
  // The longest suffix that is a proper prefix of a stop: it may still grow into a match.
  size_t longest_stop = 0;
  for (const std::string& stop : stops_) longest_stop = std::max(longest_stop, stop.size());
  for (size_t p = text.size() >= longest_stop ? text.size() - longest_stop + 1 : 0;
       p < text.size() && release == text.size(); ++p) {
    const std::string_view tail = text.substr(p);
    for (const std::string& stop : stops_) {
      if (stop.size() > tail.size() && std::string_view(stop).starts_with(tail)) {
        release = p;
        break;
      }
    }
  }
  return text.size() - complete_utf8_prefix(text, release);
}

std::string StopMatcher::push(std::string_view piece) {
  if (matched_) return {};
  held_.append(piece);
  const size_t stop_start = first_completed_stop(piece.size());
  if (stop_start != std::string::npos) {
    matched_ = true;
    std::string before = held_.substr(0, stop_start);
    held_.clear();
    return before;
  }
  const size_t ready = held_.size() - pending_length();
  std::string out = held_.substr(0, ready);
  held_.erase(0, ready);
  return out;
}

std::string StopMatcher::flush() {
  std::string rest;
  rest.swap(held_);
  return rest;
}

}  // namespace moxin
