// The string transforms of encoding: normalizer steps and the Metaspace pre-tokenizer.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "text/tokenizer_spec.hpp"

namespace moxin::text {

// Every non-overlapping occurrence of `pattern` (not empty), scanning left to right.
std::string replace_all(std::string_view s, std::string_view pattern, std::string_view content);

// Applies the normalizer steps to one piece of text. As HF's Prepend, an empty piece gets no
// prefix.
std::string normalize(std::string_view piece, const std::vector<NormalizerStep>& steps);

// Metaspace pre-tokenization of one piece: spaces become the replacement, which is prepended
// as the scheme says ("first" only for the piece that starts the original text), and with
// `split` the piece is cut before each replacement. Appends the non-empty words to `words`.
void metaspace_pre_tokenize(std::string_view piece, const MetaspaceSpec& spec, bool starts_text,
                            std::vector<std::string>& words);

}  // namespace moxin::text
