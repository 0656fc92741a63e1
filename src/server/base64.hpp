// Strict base64 (RFC 4648 section 4, the standard alphabet): padding required, no whitespace or
// other characters, no non-zero bits after the last byte. Data URLs from clients go through it.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace moxin::server {

// nullopt when `text` is not canonical base64.
std::optional<std::vector<uint8_t>> decode_base64(std::string_view text);

}  // namespace moxin::server
