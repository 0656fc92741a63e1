// One ViT image encoder, configured as DINOv2-reg4 or SigLIP by its VitConfig (docs/model.md
// section 3): patch embedding + position embedding, optional [cls, registers] prefix, pre-norm
// blocks up to the second-to-last one, prefix tokens dropped, no final norm.
#pragma once

#include <vector>

#include "backend/backend.hpp"

namespace moxin {

class VitEncoder {
 public:
  VitEncoder(Backend& backend, const VitConfig& config, const VitWeights& weights);
  // images: [B, S, S, 3] f32 NHWC normalized for this encoder -> [B * num_patches, dim]
  Tensor encode(const Tensor& images, int batch) const;
  const VitConfig& config() const { return config_; }

 private:
  struct Block {
    Tensor norm1_w, norm1_b, norm2_w, norm2_b, ls1, ls2;
    Linear qkv, proj, fc1, fc2;
  };
  Tensor embed_patches(const Tensor& images, int batch) const;
  // Expects h = block's norm1(x); leaves next's norm1(x) in h (the residual add and that norm in
  // one op), or nothing after the last block.
  void run_block(const Block& block, const Block* next, Tensor& x, Tensor& h, int batch, int tokens) const;

  Backend& backend_;
  VitConfig config_;
  Linear patch_;
  Tensor pos_embed_;  // [num_patches, dim]
  Tensor prefix_;     // [num_prefix, dim]: cls then registers (empty for SigLIP)
  std::vector<Block> blocks_;
};

}  // namespace moxin
