// The parts of a Hugging Face tokenizer.json this engine understands, as plain data. The JSON
// reader (tokenizer_json.cpp) fills it and rejects anything it cannot reproduce exactly, so the
// pipeline code never has to guess.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace moxin::text {

// Normalizer steps, applied in order to each piece of text between added tokens.
struct NormalizerStep {
  enum class Kind { Prepend, Replace };
  Kind kind;
  std::string pattern;  // Replace: the literal to find
  std::string content;  // Prepend: the prefix; Replace: the replacement
};

enum class PrependScheme { Always, First, Never };

// Metaspace pre-tokenizer (and decoder): spaces become `replacement`, optionally prepended.
struct MetaspaceSpec {
  std::string replacement;  // one code point, "▁" in practice
  PrependScheme prepend_scheme = PrependScheme::Always;
  bool split = true;  // split the text before each replacement character
};

struct AddedTokenSpec {
  std::string content;
  int64_t declared_id = 0;  // the "id" of the file; checked against the id it actually gets
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

struct BpeSpec {
  std::vector<std::pair<std::string, int64_t>> vocab;
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order
  std::optional<std::string> unk_token;
  bool byte_fallback = false;
  bool fuse_unk = false;
  bool ignore_merges = false;
};

struct DecoderStep {
  enum class Kind { Replace, ByteFallback, Fuse, Strip, Metaspace };
  Kind kind;
  std::string pattern;  // Replace: literal to find; Strip: the character to strip
  std::string content;  // Replace: the replacement
  size_t strip_start = 0;
  size_t strip_stop = 0;
  MetaspaceSpec metaspace;
};

// One item of TemplateProcessing's "single" template: the input sequence or special ids.
struct TemplateItem {
  bool is_sequence = false;
  std::vector<int64_t> ids;
};

struct TokenizerSpec {
  std::vector<AddedTokenSpec> added_tokens;
  std::vector<NormalizerStep> normalizer;
  std::optional<MetaspaceSpec> pre_tokenizer;
  BpeSpec model;
  bool has_decoder = false;  // HF joins pieces with spaces when there is no decoder
  std::vector<DecoderStep> decoder;
  std::vector<TemplateItem> single_template;  // empty: no post-processor
};

// Parses tokenizer.json text; `origin` (the file name) starts every error message.
TokenizerSpec parse_tokenizer_json(const std::string& json_text, const std::string& origin);

}  // namespace moxin::text
