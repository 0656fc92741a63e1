// docs/model.md section 2: resize to size x size, /255, then the DINOv2 and SigLIP normalizations,
// in float32 and in the same order of operations as the PyTorch/numpy reference
// ((x / 255 - mean) / std), so the values match it exactly.
#include <array>

#include "core/check.hpp"
#include "image/image.hpp"

namespace moxin {

PreprocessedImage preprocess_image(const Image& image, int size) {
  MOXIN_CHECK(size > 0, "[image] preprocess: the target size ", size, " must be positive");
  constexpr float kDinoMean[3] = {0.485f, 0.456f, 0.406f};
  constexpr float kDinoStd[3] = {0.229f, 0.224f, 0.225f};
  constexpr float kSiglipMean = 0.5f, kSiglipStd = 0.5f;

  // A byte has 256 values: each channel's normalized values are computed once, by the same
  // expression, and looked up (two divisions per element cost as much as the resize).
  std::array<std::array<float, 256>, 3> dino{};
  std::array<float, 256> siglip{};
  for (int b = 0; b < 256; ++b) {
    const float v = static_cast<float>(b) / 255.0f;
    for (int c = 0; c < 3; ++c) dino[c][b] = (v - kDinoMean[c]) / kDinoStd[c];
    siglip[b] = (v - kSiglipMean) / kSiglipStd;
  }

  PreprocessedImage out;
  out.resized = resize_bicubic(image, size, size).rgb;
  const size_t n = out.resized.size();
  out.dino.resize(n);
  out.siglip.resize(n);
  for (size_t i = 0; i < n; i += 3)
    for (size_t c = 0; c < 3; ++c) {
      const uint8_t b = out.resized[i + c];
      out.dino[i + c] = dino[c][b];
      out.siglip[i + c] = siglip[b];
    }
  return out;
}

}  // namespace moxin
