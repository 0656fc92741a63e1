#include "model/projector.hpp"

#include "core/check.hpp"

namespace moxin {

Projector::Projector(Backend& backend, const ProjectorWeights& weights)
    : backend_(backend),
      fc1_(backend.prepare_linear(weights.fc1)),
      fc2_(backend.prepare_linear(weights.fc2)),
      fc3_(backend.prepare_linear(weights.fc3)) {}

Tensor Projector::forward(const Tensor& dino, const Tensor& siglip) const {
  const int64_t rows = dino.rows();
  MOXIN_CHECK(siglip.rows() == rows && dino.cols() + siglip.cols() == fc1_.in_features,
              "[projector] features ", dino.shape_str(), " + ", siglip.shape_str(),
              " do not fit fc1 with ", fc1_.in_features, " inputs");
  Tensor fused = backend_.empty_act({rows, fc1_.in_features});
  backend_.copy_cols(dino, fused, 0);
  backend_.copy_cols(siglip, fused, dino.cols());

  Tensor h1 = backend_.empty_act({rows, fc1_.out_features});
  backend_.linear(fused, fc1_, h1);
  Tensor a1 = backend_.input_for(fc2_, h1);  // the GELU rounds for the next GEMM where it takes bf16
  backend_.gelu_erf(h1, a1);
  Tensor h2 = backend_.empty_act({rows, fc2_.out_features});
  backend_.linear(a1, fc2_, h2);
  Tensor a2 = backend_.input_for(fc3_, h2);
  backend_.gelu_erf(h2, a2);
  Tensor out = backend_.empty_act({rows, fc3_.out_features});
  backend_.linear(a2, fc3_, out);
  return out;
}

}  // namespace moxin
