#include "runtime/prompt_layout.hpp"

#include <algorithm>

#include "core/check.hpp"
#include "runtime/engine.hpp"

namespace moxin {

std::vector<PositionInput> layout_prompt(std::span<const int32_t> prompt_ids, int image_tokens) {
  MOXIN_CHECK(!prompt_ids.empty(), "[prompt] a prompt needs at least its BOS token");
  MOXIN_CHECK(image_tokens >= 0, "[prompt] image_tokens must be >= 0, got ", image_tokens);
  std::vector<PositionInput> inputs;
  inputs.reserve(prompt_ids.size() + static_cast<size_t>(image_tokens));
  inputs.push_back({prompt_ids[0], -1});
  for (int row = 0; row < image_tokens; ++row) inputs.push_back({0, row});
  for (size_t i = 1; i < prompt_ids.size(); ++i) inputs.push_back({prompt_ids[i], -1});
  return inputs;
}

Tensor embed_positions(Engine& engine, std::span<const PositionInput> inputs, const Tensor& image_rows) {
  const auto token_run = [&](std::span<const PositionInput> run) {
    std::vector<int32_t> ids;
    ids.reserve(run.size());
    for (const PositionInput& p : run) ids.push_back(p.token);
    return engine.embed(ids);
  };
  const bool any_image = std::any_of(inputs.begin(), inputs.end(), [](const PositionInput& p) { return p.is_image(); });
  if (!any_image) return token_run(inputs);

  MOXIN_CHECK(image_rows.data, "[prompt] image positions to embed but no image features");
  Backend& backend = engine.backend();
  Tensor out = backend.empty_act({static_cast<int64_t>(inputs.size()), engine.config().decoder.hidden});
  // Runs of token positions are embedded in one call each, runs of image rows copied.
  for (size_t i = 0; i < inputs.size();) {
    const bool image = inputs[i].is_image();
    size_t j = i;
    while (j < inputs.size() && inputs[j].is_image() == image) ++j;
    const int64_t at = static_cast<int64_t>(i);
    if (image) {
      backend.copy_rows(image_rows.rows_view(inputs[i].image_row, static_cast<int64_t>(j - i)), out, at);
    } else {
      backend.copy_rows(token_run(inputs.subspan(i, j - i)), out, at);
    }
    i = j;
  }
  return out;
}

}  // namespace moxin
