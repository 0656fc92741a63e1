#include "text/added_vocabulary.hpp"

#include <algorithm>
#include <unordered_map>

#include "core/check.hpp"
#include "text/text_pipeline.hpp"
#include "text/utf8.hpp"

namespace moxin::text {
namespace {

// Start of the run of Unicode whitespace that ends `text` (its size when there is none).
size_t trailing_space_start(std::string_view text) {
  size_t start = 0;
  for (size_t pos = 0; pos < text.size();) {
    const size_t len = utf8_length(static_cast<unsigned char>(text[pos]));
    if (!is_unicode_whitespace(decode_utf8_at(text, pos))) start = pos + len;
    pos += len;
  }
  return start;
}

// Length of the run of Unicode whitespace that starts `text`.
size_t leading_space_length(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size() && is_unicode_whitespace(decode_utf8_at(text, pos))) {
    pos += utf8_length(static_cast<unsigned char>(text[pos]));
  }
  return pos;
}

}  // namespace

void AddedVocabulary::Trie::insert(std::string_view pattern, int32_t token) {
  int32_t node = 0;
  for (char c : pattern) {
    const auto byte = static_cast<unsigned char>(c);
    auto& children = nodes[node].children;
    const auto it = std::find_if(children.begin(), children.end(), [&](const auto& ch) { return ch.first == byte; });
    if (it != children.end()) {
      node = it->second;
    } else {
      const auto child = static_cast<int32_t>(nodes.size());
      children.emplace_back(byte, child);
      nodes.emplace_back();
      node = child;
    }
  }
  nodes[node].token = token;
}

int32_t AddedVocabulary::Trie::longest_at(std::string_view text, size_t pos, size_t& length) const {
  int32_t best = -1;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    const auto& children = nodes[node].children;
    const auto it = std::find_if(children.begin(), children.end(), [&](const auto& ch) { return ch.first == byte; });
    if (it == children.end()) break;
    node = it->second;
    if (nodes[node].token >= 0) {
      best = nodes[node].token;
      length = i + 1 - pos;
    }
  }
  return best;
}

AddedVocabulary::AddedVocabulary(const std::vector<AddedTokenSpec>& specs, const BpeModel& model,
                                 const std::vector<NormalizerStep>& normalizer, const std::string& origin) {
  std::unordered_map<std::string, size_t> by_content;
  int32_t next_free = static_cast<int32_t>(model.size());
  for (const AddedTokenSpec& spec : specs) {
    // HF ignores empty contents, and a repeated content keeps its first id with the later flags.
    if (spec.content.empty()) continue;
    MOXIN_CHECK(find_invalid_utf8(spec.content) == std::string::npos, "[tokenizer] ", origin, ": added token with id ",
                spec.declared_id, " is not valid UTF-8");
    int32_t id;
    if (auto it = by_content.find(spec.content); it != by_content.end()) {
      id = tokens_[it->second].id;
    } else if (auto model_id = model.piece_id(spec.content)) {
      id = *model_id;
    } else {
      id = next_free++;
    }
    MOXIN_CHECK(id == spec.declared_id, "[tokenizer] ", origin, ": added token \"", spec.content, "\" declares id ",
                spec.declared_id, " but gets id ", id,
                " (the model's id for that piece, or the next id after the model vocab)");
    AddedToken token{spec.content, spec.content, id, spec.special, spec.normalized, spec.lstrip, spec.rstrip};
    if (spec.normalized) token.pattern = normalize(spec.content, normalizer);
    if (auto it = by_content.find(spec.content); it != by_content.end()) {
      tokens_[it->second] = std::move(token);
    } else {
      by_content.emplace(spec.content, tokens_.size());
      tokens_.push_back(std::move(token));
    }
  }
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const AddedToken& t = tokens_[i];
    if (t.pattern.empty()) continue;
    (t.normalized ? normalized_ : raw_).insert(t.pattern, static_cast<int32_t>(i));
  }
}

std::vector<TextSplit> AddedVocabulary::split(std::string_view text, bool normalized, bool parse_special) const {
  const Trie& trie = normalized ? normalized_ : raw_;
  std::vector<TextSplit> splits;
  size_t done = 0;  // end of the last emitted split
  size_t pos = 0;
  while (pos < text.size()) {
    size_t length = 0;
    const int32_t index = trie.longest_at(text, pos, length);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[index];
    size_t start = pos;
    size_t stop = pos + length;
    pos = stop;  // matching resumes after the match even when it is not used (as HF)
    if (token.special && !parse_special) continue;
    if (token.lstrip) start = std::max(trailing_space_start(text.substr(0, start)), done);
    if (token.rstrip) stop += leading_space_length(text.substr(stop));
    if (start > done) splits.push_back({done, start, -1});
    splits.push_back({start, stop, token.id});
    done = stop;
  }
  if (done < text.size() || splits.empty()) splits.push_back({done, text.size(), -1});
  return splits;
}

}  // namespace moxin::text
