// The Moxin VLM checkpoint mapped onto named, shape-checked weights (docs/model.md section 1).
// Every dimension is derived from the tensors and cross-checked against config.json.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "io/safetensors.hpp"

namespace moxin {

// One ViT configured as DINOv2-reg4 (cls + 4 registers + LayerScale) or SigLIP (neither).
struct VitConfig {
  int dim = 0;           // 1024 (DINOv2) / 1152 (SigLIP)
  int depth = 0;         // blocks stored: 24 / 27
  int heads = 16;
  int head_dim = 0;      // dim / heads
  int mlp_dim = 0;       // 4096 / 4304
  int patch = 14;
  int image_size = 224;
  int num_patches = 256; // (image_size / patch)^2, from pos_embed
  bool has_cls = false;
  int num_registers = 0;
  bool layerscale = false;
  float ln_eps = 1e-6f;
  int feature_layer() const { return depth - 2; }  // output of the second-to-last block
  int num_prefix() const { return (has_cls ? 1 : 0) + num_registers; }
};

struct DecoderConfig {
  int hidden = 4096;
  int layers = 36;
  int heads = 32;
  int kv_heads = 8;
  int head_dim = 128;
  int intermediate = 14336;
  int vocab = 32064;  // rows of embed_tokens / lm_head
  float rms_eps = 1e-5f;
  float rope_theta = 10000.0f;
  int max_position = 32768;
  int bos_id = 1;
  int eos_id = 2;
};

struct ModelConfig {
  VitConfig dino;
  VitConfig siglip;
  DecoderConfig decoder;
  int projector_in = 0;      // dino.dim + siglip.dim
  int projector_hidden = 0;  // 4 * projector_in
};

// A linear layer's weight [out, in] (+ optional bias [out]). Quantized forms (docs/model.md
// section 5) keep packed codes in `weight` (U32) with `scales`/`biases`; bits == 0 means dense
// or FP8: an F8_E4M3 `weight` [out, in] with its per-output-channel F32 `scales` [out].
struct LinearWeight {
  bool is_fp8() const { return weight != nullptr && weight->dtype == DType::F8_E4M3; }

  const TensorInfo* weight = nullptr;
  const TensorInfo* bias = nullptr;
  const TensorInfo* scales = nullptr;
  const TensorInfo* qbiases = nullptr;
  int bits = 0;
  int group_size = 0;
  int64_t out_features = 0;
  int64_t in_features = 0;
};

struct NormWeight {
  const TensorInfo* weight = nullptr;
  const TensorInfo* bias = nullptr;  // LayerNorm only
};

struct VitBlockWeights {
  NormWeight norm1, norm2;
  LinearWeight qkv, proj, fc1, fc2;
  const TensorInfo* ls1 = nullptr;  // LayerScale, DINOv2 only
  const TensorInfo* ls2 = nullptr;
};

struct VitWeights {
  const TensorInfo* patch_weight = nullptr;  // [dim, 3, 14, 14]
  const TensorInfo* patch_bias = nullptr;    // [dim]
  // The same conv weight as a matrix [dim, 3 * patch * patch], inputs ordered (c, kh, kw).
  LinearWeight patch_linear;
  const TensorInfo* pos_embed = nullptr;     // [1, 256, dim]
  const TensorInfo* cls_token = nullptr;     // [1, 1, dim] or nullptr
  const TensorInfo* reg_token = nullptr;     // [1, R, dim] or nullptr
  std::vector<VitBlockWeights> blocks;       // only blocks 0..feature_layer are mapped
};

struct ProjectorWeights {
  LinearWeight fc1, fc2, fc3;
};

struct DecoderLayerWeights {
  NormWeight input_norm, post_attention_norm;
  LinearWeight q, k, v, o, gate, up, down;
};

struct DecoderWeights {
  const TensorInfo* embed = nullptr;  // [vocab, hidden]
  std::vector<DecoderLayerWeights> layers;
  NormWeight final_norm;
  LinearWeight lm_head;
};

struct Checkpoint {
  std::string dir;
  ModelConfig config;
  TensorStore store;
  VitWeights dino, siglip;
  ProjectorWeights projector;
  DecoderWeights decoder;
};

// Loads config.json and the safetensors of `dir`, maps every tensor and checks every shape
// and dtype. Throws moxin::Error naming the file, the tensor, and expected vs actual shape.
Checkpoint load_checkpoint(const std::string& dir);

}  // namespace moxin
