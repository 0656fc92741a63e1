// moxin::preprocess: the vision tower's inputs for one encoded image, exactly as the engine
// computes them (docs/model.md section 2) and as `moxin preprocess` writes them.
//
//   moxin::VisionInputs in = moxin::preprocess(moxin::read_file("cat.jpg"));
//   // in.resized: 224*224*3 uint8 (HWC), in.dino / in.siglip: the normalized floats (HWC)
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "moxin/error.hpp"

namespace moxin {

struct VisionInputs {
  int size = 0;                          // width = height of the resized image
  int source_width = 0, source_height = 0;  // the decoded image's size
  std::vector<uint8_t> resized;          // size * size * 3, RGB, row-major
  std::vector<float> dino, siglip;       // size * size * 3 each: the two encoders' normalizations
};

// Decodes `image_file` (JPEG, PNG, WebP, GIF or BMP, sniffed from its bytes), resizes it to
// size x size (Pillow-exact bicubic) and normalizes it for both encoders. Throws moxin::Error
// for an undecodable image, one with more than max_pixels pixels, or a size outside [1, 4096].
VisionInputs preprocess(std::span<const uint8_t> image_file, int size = 224, uint64_t max_pixels = 89478485);

}  // namespace moxin
