// The Moxin VLM assembled from its parts: two ViT encoders, the fused projector and the
// decoder, on one backend, from one mapped checkpoint.
#pragma once

#include <memory>

#include "model/decoder.hpp"
#include "model/projector.hpp"
#include "model/vit_encoder.hpp"

namespace moxin {

struct ImageFeatures {
  Tensor dino;       // [B*256, D1]
  Tensor siglip;     // [B*256, D2]
  Tensor projected;  // [B*256, hidden]
};

class Vlm {
 public:
  // The checkpoint must outlive the model (the CPU backend computes from its mapping).
  Vlm(Backend& backend, const Checkpoint& checkpoint);
  const ModelConfig& config() const { return config_; }
  Backend& backend() const { return backend_; }
  const Decoder& decoder() const { return decoder_; }

  // dino_images / siglip_images: [B, 224, 224, 3] f32, normalized per encoder.
  ImageFeatures encode_images(const Tensor& dino_images, const Tensor& siglip_images, int batch) const;

 private:
  Backend& backend_;
  ModelConfig config_;
  VitEncoder dino_;
  VitEncoder siglip_;
  Projector projector_;
  Decoder decoder_;
};

}  // namespace moxin
