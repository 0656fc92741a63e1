// The one bound on token ids that every reader of ids (tokenizer.json, config.json, the CLI,
// requests) enforces, so their messages agree. Real vocabularies are dense and far smaller;
// the bound keeps a corrupt file from making id-indexed tables huge.
#pragma once

#include <cstdint>

namespace moxin {

constexpr int64_t kMaxTokenId = (int64_t{1} << 24) - 1;  // 16777215

}  // namespace moxin
