// The decoder's input sequence for a prompt (docs/model.md section 4): BOS, then the image's
// projected rows when there is an image, then the rest of the prompt's tokens. Every caller
// (the single-sequence Session, the scheduler) lays a prompt out and embeds it through here.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "backend/tensor.hpp"

namespace moxin {

class Engine;

// What a position of a sequence is fed: a token id, or a row of the image's projected features.
struct PositionInput {
  int32_t token = 0;
  int32_t image_row = -1;  // >= 0: this row of the image instead of a token
  bool is_image() const { return image_row >= 0; }
};

// prompt_ids: tokenize_prompt()'s ids, BOS first. image_tokens: rows of the projected image,
// 0 for a text-only prompt.
std::vector<PositionInput> layout_prompt(std::span<const int32_t> prompt_ids, int image_tokens);

// Input embeddings [inputs.size(), hidden] of `inputs`: token rows from the embedding table,
// image rows copied from `image_rows` ([image tokens, hidden]; unused without image inputs).
Tensor embed_positions(Engine& engine, std::span<const PositionInput> inputs, const Tensor& image_rows);

}  // namespace moxin
