// The group sizes of MLX's affine quantization that checkpoints may carry and every backend reads
// (docs/model.md section 5): the one list the config reader, the quantizer and the CLI check.
#pragma once

#include <algorithm>
#include <iterator>
#include <string>
#include <vector>

namespace moxin {

inline constexpr int kQuantGroupSizes[] = {32, 64, 128};

inline bool is_quant_group_size(int group_size) {
  return std::find(std::begin(kQuantGroupSizes), std::end(kQuantGroupSizes), group_size) != std::end(kQuantGroupSizes);
}

inline std::vector<int> quant_group_size_list() { return {std::begin(kQuantGroupSizes), std::end(kQuantGroupSizes)}; }

// "32, 64 or 128", for messages.
inline std::string quant_group_sizes_text() {
  std::string text;
  const size_t n = std::size(kQuantGroupSizes);
  for (size_t i = 0; i < n; ++i)
    text += std::to_string(kQuantGroupSizes[i]) + (i + 2 < n ? ", " : i + 2 == n ? " or " : "");
  return text;
}

}  // namespace moxin
