// Element types as safetensors names them, with their sizes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace moxin {

enum class DType : uint8_t { F32, F16, BF16, I8, U8, I32, U32, I64 };

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);  // "F32", "BF16", ... as in safetensors headers
std::optional<DType> dtype_from_name(std::string_view name);

}  // namespace moxin
