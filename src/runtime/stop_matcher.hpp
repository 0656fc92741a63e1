// Incremental stop-string detection on streamed text. Feed decoded text pieces as they come;
// each push returns the text that is safe to emit now. Text that could still be the start of a
// stop string, and an incomplete UTF-8 character at the end, are held back until resolved.
//
// Generation ends at the first stop string to COMPLETE (if several complete at the same byte,
// the longest, i.e. the one starting earliest, wins): the text before it is released, matched()
// becomes true, and the stop string and everything after it are never emitted. Because only
// completion matters, the result does not depend on how the text is split into pieces.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace moxin {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);  // empty strings are refused

  std::string push(std::string_view piece);  // after a match: returns "" and ignores the piece
  std::string flush();                       // end of generation: release what is held back
  bool matched() const { return matched_; }

 private:
  // Bytes at the end of held_ that must wait: a suffix that starts some stop string, or an
  // incomplete UTF-8 character.
  size_t pending_length() const;
  // Start of the first stop string to complete in held_, or npos; `fresh` = bytes just added.
  size_t first_completed_stop(size_t fresh) const;

  std::vector<std::string> stops_;
  std::string held_;
  bool matched_ = false;
};

}  // namespace moxin
