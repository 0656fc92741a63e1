// What config.json (and an optional quantize_config.json) say about the model. Every field
// is optional: the tensors define the dimensions, these values only cross-check them and
// supply what tensors cannot tell (head counts, norm eps, RoPE theta, token ids).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace moxin {

// How the decoder linears are quantized (docs/model.md section 5): MLX affine groups, or FP8
// E4M3 with per-output-channel scales ({"quant_method": "fp8", "weight_scale": "per_channel"}).
struct QuantizationConfig {
  int bits = 0;        // 4 or 8 (8 for fp8)
  int group_size = 0;  // 32, 64 or 128 (0 for fp8)
  bool fp8 = false;
  std::string source;  // the file (and key) they came from, for messages
};

struct ConfigJson {
  std::string path;
  // Decoder: `text_config` (HF Prismatic style) or, for a flat config, the top level.
  std::string decoder_key_prefix;  // "text_config." or "" (for messages)
  std::optional<int64_t> hidden, layers, heads, kv_heads, head_dim, intermediate, vocab;
  std::optional<int64_t> max_position, bos_id, eos_id;
  std::optional<double> rms_eps, rope_theta;
  // "timm_model_kwargs": [dino, siglip], the kwargs the featurizers were created with (written
  // for non-published sizes). Head counts are in no tensor: absent means the published 16.
  struct VitKwargs {
    std::string key;  // "timm_model_kwargs[0]", for messages
    std::optional<int64_t> embed_dim, depth, num_heads, mlp_dim;  // mlp_dim from mlp_ratio
  };
  VitKwargs dino, siglip;
  std::optional<QuantizationConfig> quantization;  // config.json "quantization" (MLX)
};

// Throws moxin::Error naming the file and key for unreadable JSON or ill-typed values.
ConfigJson read_config_json(const std::string& path);

// quantize_config.json ({"bits": 4|8, "group_size": 32|64|128}, the fp8 form above, or the seed
// crate's {"quantization": {...}}); nullopt if the file is absent.
std::optional<QuantizationConfig> read_quantize_config(const std::string& path);

}  // namespace moxin
