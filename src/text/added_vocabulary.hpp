// Added tokens (special and not): their ids, and finding them in text the way HF's
// AddedVocabulary does (leftmost-longest matching, lstrip/rstrip, raw vs normalized forms).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "text/bpe_model.hpp"
#include "text/tokenizer_spec.hpp"

namespace moxin::text {

struct AddedToken {
  std::string content;
  std::string pattern;  // what is matched: the content, or for normalized tokens its normalized form
  int32_t id;
  bool special;
  bool normalized;
  bool lstrip;
  bool rstrip;
};

// A stretch of text: an added token (id >= 0) or text still to tokenize (id < 0).
struct TextSplit {
  size_t begin;
  size_t end;
  int32_t id;
};

class AddedVocabulary {
 public:
  // Ids are given as HF gives them: the model's id for a piece it has, otherwise the next free
  // id after the model vocab; a declared id that disagrees is an error (the file is corrupt).
  AddedVocabulary(const std::vector<AddedTokenSpec>& specs, const BpeModel& model,
                  const std::vector<NormalizerStep>& normalizer, const std::string& origin);

  // Splits `text` at the tokens matched in raw text (normalized = false) or in normalized text
  // (normalized = true). Special tokens are skipped unless parse_special, as HF does with
  // encode_special_tokens=True. Covers the text; may contain empty text splits.
  std::vector<TextSplit> split(std::string_view text, bool normalized, bool parse_special) const;

  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  // Byte trie over the patterns of one group, for leftmost-longest matching.
  struct Trie {
    struct Node {
      std::vector<std::pair<unsigned char, int32_t>> children;
      int32_t token = -1;  // index into tokens_ when a pattern ends here
    };
    std::vector<Node> nodes{1};
    void insert(std::string_view pattern, int32_t token);
    // Index of the longest pattern starting at text[pos], or -1.
    int32_t longest_at(std::string_view text, size_t pos, size_t& length) const;
  };

  std::vector<AddedToken> tokens_;
  Trie raw_;
  Trie normalized_;
};

}  // namespace moxin::text
