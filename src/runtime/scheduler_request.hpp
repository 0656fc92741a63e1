// What a client hands the scheduler: the prompt's token ids, its preprocessed image, and how
// to sample and end (SequenceOptions).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "runtime/content_hash.hpp"
#include "runtime/sequence_core.hpp"

namespace moxin {

// A decoded and preprocessed image (image.hpp's decode_and_preprocess), named by its file's digest.
struct RequestImage {
  Digest digest;
  std::vector<float> dino, siglip;
};

// Reads an encoded image file, preprocesses it for both encoders and names it by its bytes'
// digest. Throws moxin::Error (naming `what`) for an image that cannot be decoded.
RequestImage prepare_request_image(std::span<const uint8_t> bytes, uint64_t max_pixels, int image_size,
                                   const std::string& what);

struct GenerationRequest : SequenceOptions {
  std::vector<int32_t> prompt_ids;  // tokenize_prompt(): BOS first; the image goes after BOS
  std::optional<RequestImage> image;
};

}  // namespace moxin
