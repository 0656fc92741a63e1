// The public moxin::preprocess (include/moxin/preprocess.hpp) over the image library.
#include "moxin/preprocess.hpp"

#include "core/check.hpp"
#include "image/image.hpp"

namespace moxin {

VisionInputs preprocess(std::span<const uint8_t> image_file, int size, uint64_t max_pixels) {
  // The same bound as `moxin preprocess --size`: far above any encoder's input, far below overflow.
  MOXIN_CHECK(size >= 1 && size <= 4096, "[preprocess] size must be in [1, 4096], got ", size);
  MOXIN_CHECK(max_pixels >= 1, "[preprocess] max_pixels must be >= 1");
  PreprocessedImage pre = decode_and_preprocess(image_file, DecodeLimits{max_pixels}, "the image", size);
  return {size, pre.source_width, pre.source_height, std::move(pre.resized), std::move(pre.dino), std::move(pre.siglip)};
}

}  // namespace moxin
