// Captured image encodings (CUDA graphs): both encoders and the projector for B images, replayed
// with one launch instead of the ~13 launches of each of the 51 encoder layers, whose host-side
// cost an eager encoding pays one after another. One graph per batch size, at most kMaxGraphs of
// them (each holds device memory for its activations; the least recently used goes first).
// Inputs and outputs live in tensors the graph was recorded with; run() copies the images in and
// returns views of the outputs, valid until the next run(). On backends without graphs, run()
// declines.
#pragma once

#include <memory>
#include <optional>

#include "model/vlm.hpp"
#include "runtime/lru_cache.hpp"

namespace moxin {

class VisionGraphs {
 public:
  VisionGraphs(Backend& backend, const Vlm& model);
  ~VisionGraphs();

  static constexpr size_t kMaxGraphs = 8;

  // dino, siglip: [B, size, size, 3] images in the backend's memory, normalized per encoder.
  std::optional<ImageFeatures> run(const Tensor& dino, const Tensor& siglip, int batch);

 private:
  struct Graph;
  Graph* graph_for(const Tensor& dino, int batch);  // nullptr: the backend cannot capture

  Backend& backend_;
  const Vlm& model_;
  bool supported_ = true;
  LruCache<int, Graph> graphs_;
};

}  // namespace moxin
