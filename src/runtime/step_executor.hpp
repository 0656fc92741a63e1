// Runs the scheduler's plans on the engine: the images of newly admitted sequences through the
// vision encoders (one batched call for the distinct images the image cache lacks), and one
// forward over a plan's chunks.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "runtime/engine.hpp"
#include "runtime/image_feature_cache.hpp"
#include "runtime/scheduled_sequence.hpp"

namespace moxin {

class StepExecutor {
 public:
  StepExecutor(Engine& engine, size_t image_cache);

  // Gives each sequence that still needs its image rows its projected image. Returns the
  // sequences whose image could not be encoded, with the reason.
  std::vector<std::pair<ScheduledSequence*, std::string>> encode_images(const std::vector<ScheduledSequence*>& sequences);
  // Issues one engine step over the chunks (a sequence's token drawn at the previous step comes
  // from the engine's drawn tokens); returns the logits of each chunk's last position, [chunks,
  // vocab], in the backend's memory (valid until the next step). Throws moxin::Error when the
  // engine fails.
  Tensor forward(const std::vector<StepPlan::Chunk>& chunks);

  uint64_t image_cache_hits() const { return image_hits_; }
  uint64_t images_encoded() const { return images_encoded_; }

 private:
  Engine& engine_;
  ImageFeatureCache images_;
  uint64_t image_hits_ = 0;
  uint64_t images_encoded_ = 0;
};

}  // namespace moxin
