// The parts of load_checkpoint, one per model component (internal to src/io).
#pragma once

#include <optional>
#include <string>

#include "io/checkpoint.hpp"
#include "io/model_config.hpp"
#include "io/tensor_binder.hpp"

namespace moxin {

inline constexpr const char* kDinoPrefix = "vision_backbone.featurizer.";
inline constexpr const char* kSiglipPrefix = "vision_backbone.fused_featurizer.";

// Where the two encoders' tensors are: kDinoPrefix / kSiglipPrefix (Hugging Face), or the
// seed crate's "vision_backbone.featurizer.0." / ".1.".
struct VisionPrefixes {
  std::string dino, siglip;
};
VisionPrefixes vision_prefixes(const TensorBinder& b);

// One ViT under `prefix` (attention fused as attn.qkv + attn.proj, or split as
// attn.q_proj/k_proj/v_proj + attn.out_proj), cross-checked against its timm kwargs from config.json (which
// also give the head count; else the published 16). Fills `config`.
VitWeights map_vit(TensorBinder& b, const std::string& prefix, const ConfigJson& json,
                   const ConfigJson::VitKwargs& kwargs, VitConfig& config);

// A dimension config.json states must equal the one the tensors give.
void cross_check(const ConfigJson& json, const std::optional<int64_t>& stated, int64_t derived,
                 const std::string& key, const std::string& evidence);

// The LLM under whichever prefix the checkpoint uses (returned in `prefix`), cross-checked
// against config.json. `quant` is null when no quantization metadata exists.
DecoderWeights map_decoder(TensorBinder& b, const ConfigJson& json, const QuantizationConfig* quant,
                           DecoderConfig& config, std::string& prefix);

// fc1 [hidden, in] -> fc2 [out, hidden] -> fc3 [out, out]; returns the derived hidden size.
ProjectorWeights map_projector(TensorBinder& b, int64_t in, int64_t out, int64_t& hidden);

}  // namespace moxin
