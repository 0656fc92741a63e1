// The fused MLP projector: concat(dino, siglip) -> fc1 -> GELU -> fc2 -> GELU -> fc3.
#pragma once

#include "backend/backend.hpp"

namespace moxin {

class Projector {
 public:
  Projector(Backend& backend, const ProjectorWeights& weights);
  // dino [N, D1], siglip [N, D2] -> [N, hidden]
  Tensor forward(const Tensor& dino, const Tensor& siglip) const;

 private:
  Backend& backend_;
  Linear fc1_, fc2_, fc3_;
};

}  // namespace moxin
