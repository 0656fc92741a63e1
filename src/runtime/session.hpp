// One conversation in the engine, on the caller's thread: lays out the prompt's inputs
// (prompt_layout.hpp), prefills them in one step and decodes token by token.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "runtime/engine.hpp"
#include "runtime/prompt.hpp"

namespace moxin {

struct PrefillResult {
  std::vector<int32_t> input_ids;    // text tokens with BOS (image tokens not included)
  std::optional<ImageFeatures> image;  // present when the prompt had an image
  std::vector<float> logits;         // [vocab] of the last prompt position
  double vision_ms = 0;
  double prefill_ms = 0;
  int prompt_tokens = 0;             // text tokens + image tokens
};

class Session {
 public:
  Session(Engine& engine, uint64_t max_image_pixels);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // image: an encoded image file, or empty for a text-only prompt.
  PrefillResult prefill(const std::vector<ChatTurn>& turns, std::span<const uint8_t> image);
  std::vector<float> decode(int32_t token);
  int64_t position() const { return state_.length; }
  Engine& engine() const { return engine_; }

 private:
  std::vector<float> run(Tensor embeddings);
  std::vector<float> to_host(const Tensor& logits);

  Engine& engine_;
  uint64_t max_image_pixels_;
  SequenceState state_;
};

}  // namespace moxin
