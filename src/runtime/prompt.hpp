// The Prismatic "Pure" prompt format (docs/model.md section 4) and its tokenization.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moxin {

class Tokenizer;

struct ChatTurn {
  std::string user;
  std::string assistant;  // empty for the turn being answered (always the last one)
};

// "In: {q1}\nOut: {a1}</s>In: {q2}\nOut:" with each message stripped, "<image>" removed and
// the whole prompt right-stripped.
std::string format_prompt(const std::vector<ChatTurn>& turns);

// Token ids of the formatted prompt with BOS first. The "</s>" separators between turns are
// the EOS control token (as the Hugging Face tokenizer parses them in the reference); text the
// user typed is never parsed for control tokens.
std::vector<int32_t> tokenize_prompt(const Tokenizer& tokenizer, const std::vector<ChatTurn>& turns);

}  // namespace moxin
