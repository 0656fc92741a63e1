// docs/model.md section 2: resize to size x size, /255, then the DINOv2 and SigLIP normalizations,
// in float32 and in the same order of operations as the PyTorch/numpy reference
// ((x / 255 - mean) / std), so the values match it exactly.
#include "core/check.hpp"
#include "image/image.hpp"

namespace moxin {

PreprocessedImage preprocess_image(const Image& image, int size) {
  MOXIN_CHECK(size > 0, "[image] preprocess: the target size ", size, " must be positive");
  constexpr float kDinoMean[3] = {0.485f, 0.456f, 0.406f};
  constexpr float kDinoStd[3] = {0.229f, 0.224f, 0.225f};
  constexpr float kSiglipMean = 0.5f, kSiglipStd = 0.5f;

  PreprocessedImage out;
  out.resized = resize_bicubic(image, size, size).rgb;
  const size_t n = out.resized.size();
  out.dino.resize(n);
  out.siglip.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(out.resized[i]) / 255.0f;
    const int c = static_cast<int>(i % 3);
    out.dino[i] = (v - kDinoMean[c]) / kDinoStd[c];
    out.siglip[i] = (v - kSiglipMean) / kSiglipStd;
  }
  return out;
}

}  // namespace moxin
