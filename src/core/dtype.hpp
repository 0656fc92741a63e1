// Element types as safetensors names them, with their sizes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace moxin {

// F8_E4M3: OCP FP8 E4M3 "fn" (no infinities, 0x7F/0xFF NaN, max 448), as torch.float8_e4m3fn.
enum class DType : uint8_t { F32, F16, BF16, I8, U8, I32, U32, I64, F8_E4M3 };

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);  // "F32", "BF16", ... as in safetensors headers
std::optional<DType> dtype_from_name(std::string_view name);

}  // namespace moxin
