#include "runtime/scheduler_request.hpp"

#include "image/image.hpp"

namespace moxin {

RequestImage prepare_request_image(std::span<const uint8_t> bytes, uint64_t max_pixels, int image_size,
                                   const std::string& what) {
  RequestImage image;
  image.digest = sha256(bytes);
  PreprocessedImage pre = decode_and_preprocess(bytes, DecodeLimits{max_pixels}, what, image_size);
  image.dino = std::move(pre.dino);
  image.siglip = std::move(pre.siglip);
  return image;
}

}  // namespace moxin
