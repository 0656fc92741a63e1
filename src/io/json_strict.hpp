// JSON parsing that refuses what nlohmann accepts silently: duplicate object keys (it keeps
// one of them) and absurd nesting. Used for safetensors headers, index files and config.json.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace moxin {

// `context` starts every error message, e.g. "[safetensors] /m/model.safetensors: header".
nlohmann::json parse_json_strict(std::string_view text, const std::string& context,
                                 int max_depth = 32);

// Only the nesting bound, for formats whose reference reader lets a repeated key win
// (tokenizer.json, tool input): deep nesting is what overflows the stack of recursive code
// (dump, comparisons) that later walks the value.
nlohmann::json parse_json_bounded(std::string_view text, const std::string& context, int max_depth);

// Reads and parses a whole file; `area` is the message's bracketed prefix ("[checkpoint]").
nlohmann::json read_json_file(const std::string& path, const std::string& area);

// A short rendering of a value for messages: `"abc"`, `-3`, `2.5`, `null`, "an object", "an array".
std::string describe_json(const nlohmann::json& value);

}  // namespace moxin
