// UTF-8 helpers for the tokenizer: validation, code point iteration and the few Unicode
// properties the Hugging Face pipeline relies on.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace moxin::text {

// Byte offset of the first byte that does not start a well-formed UTF-8 sequence (overlong
// forms, surrogates and code points above U+10FFFF count as ill-formed), or npos when valid.
size_t find_invalid_utf8(std::string_view s);

// Length in bytes of the sequence that starts with `lead`, for text already validated.
inline size_t utf8_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

// Decodes the code point starting at s[pos] of validated text.
char32_t decode_utf8_at(std::string_view s, size_t pos);

void append_utf8(std::string& out, char32_t cp);

// Unicode White_Space, which is what Rust's `\s` matches (used by added-token lstrip/rstrip).
bool is_unicode_whitespace(char32_t cp);

// True when `s` holds exactly one code point (the `char` fields of tokenizer.json).
bool is_single_code_point(std::string_view s);

}  // namespace moxin::text
