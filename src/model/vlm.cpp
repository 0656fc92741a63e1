#include "model/vlm.hpp"

#include <functional>

#include "core/check.hpp"

namespace moxin {

Vlm::Vlm(Backend& backend, const Checkpoint& checkpoint)
    : backend_(backend),
      config_(checkpoint.config),
      dino_(backend, checkpoint.config.dino, checkpoint.dino),
      siglip_(backend, checkpoint.config.siglip, checkpoint.siglip),
      projector_(backend, checkpoint.projector),
      decoder_(backend, checkpoint.config.decoder, checkpoint.decoder) {
  MOXIN_CHECK(config_.dino.num_patches == config_.siglip.num_patches,
              "[vlm] the encoders disagree on the patch count (", config_.dino.num_patches, " vs ",
              config_.siglip.num_patches, ")");
}

ImageFeatures Vlm::encode_images(const Tensor& dino_images, const Tensor& siglip_images,
                                 int batch) const {
  ImageFeatures f;
  // The encoders are independent until the projector: on a GPU each alone fills few SMs
  // (~10 kernels per layer over 256-261 rows), so they run side by side.
  const std::function<void()> encoders[] = {[&] { f.dino = dino_.encode(dino_images, batch); },
                                            [&] { f.siglip = siglip_.encode(siglip_images, batch); }};
  backend_.run_concurrently(encoders);
  f.projected = projector_.forward(f.dino, f.siglip);
  return f;
}

}  // namespace moxin
