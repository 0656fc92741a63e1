#include "io/model_config.hpp"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/check.hpp"
#include "core/token_id.hpp"
#include "io/checkpoint.hpp"
#include "io/json_strict.hpp"
#include "io/quant_group_sizes.hpp"

namespace moxin {
namespace {

using nlohmann::json;

// Accepted ranges: generous around every published model, tight enough that casts to int or
// float and products of sizes cannot overflow, and that a norm or RoPE stays meaningful.
constexpr int64_t kMaxWidth = 1 << 20;      // hidden, intermediate, head_dim, ViT embed_dim
constexpr int64_t kMaxDepth = 1024;         // layers, ViT blocks
constexpr int64_t kMaxHeads = 1024;
constexpr int64_t kMaxPositions = 1 << 24;  // max_position_embeddings
constexpr double kMinRmsEps = 1e-12, kMaxRmsEps = 0.1;
constexpr double kMinRopeTheta = 1.0, kMaxRopeTheta = 1e10;
constexpr double kMinMlpRatio = 1e-3, kMaxMlpRatio = 64.0;

// Reads typed optional fields of one JSON object; null counts as absent (HF writes
// "head_dim": null and similar).
class FieldReader {
 public:
  FieldReader(const json& object, std::string path, std::string prefix)
      : object_(object), path_(std::move(path)), prefix_(std::move(prefix)) {}

  std::optional<int64_t> integer(const char* key, int64_t min_value, int64_t max_value) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    MOXIN_CHECK(v->is_number_integer() && v->get<int64_t>() >= min_value && v->get<int64_t>() <= max_value,
                where(key), " is ", describe_json(*v), ", expected an integer in [", min_value, ", ", max_value, "]");
    return v->get<int64_t>();
  }

  // Bounds of a real value: casting to float, or multiplying by a width, must stay meaningful.
  std::optional<double> number(const char* key, double min_value, double max_value) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    MOXIN_CHECK(v->is_number() && v->get<double>() >= min_value && v->get<double>() <= max_value, where(key),
                " is ", describe_json(*v), ", expected a number in [", min_value, ", ", max_value, "]");
    return v->get<double>();
  }

  // A token id, or a list of them (the first one is used).
  std::optional<int64_t> token_id(const char* key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    const json& id = v->is_array() && !v->empty() ? v->front() : *v;
    MOXIN_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() <= kMaxTokenId, where(key),
                " is ", describe_json(*v), ", expected a token id (an integer in [0, ", kMaxTokenId,
                "]) or a list of them");
    return id.get<int64_t>();
  }

  const json* object(const char* key) const {
    const json* v = find(key);
    if (v)
      MOXIN_CHECK(v->is_object(), where(key), " is ", describe_json(*v), ", expected an object");
    return v;
  }
  const json* array(const char* key) const {
    const json* v = find(key);
    if (v) MOXIN_CHECK(v->is_array(), where(key), " is ", describe_json(*v), ", expected an array");
    return v;
  }

  // Refuses settings that change the math in ways this engine does not implement.
  void require_absent(const char* key, const char* why) const {
    const json* v = find(key);
    MOXIN_CHECK(!v, where(key), " is ", describe_json(*v), ": ", why);
  }
  void require_string(const char* key, const char* expected) const {
    const json* v = find(key);
    MOXIN_CHECK(!v || (v->is_string() && v->get<std::string>() == expected), where(key), " is ",
                describe_json(v ? *v : json()), ", moxin implements only \"", expected, "\"");
  }

  std::string where(const char* key) const {
    return cat("[checkpoint] ", path_, ": ", prefix_, key);
  }

 private:
  const json* find(const char* key) const {
    const auto it = object_.find(key);
    return it == object_.end() || it->is_null() ? nullptr : &*it;
  }
  const json& object_;
  std::string path_;
  std::string prefix_;
};

// {"quant_method": "fp8", "weight_scale": "per_channel"}: the only method besides MLX affine.
QuantizationConfig read_fp8_quantization(const json& object, const FieldReader& reader, const std::string& source) {
  reader.require_string("quant_method", "fp8");
  reader.require_string("weight_scale", "per_channel");
  MOXIN_CHECK(!object.contains("bits") && !object.contains("group_size"), "[checkpoint] ", source,
              ": \"quant_method\": \"fp8\" has one scale per output channel; drop bits and group_size");
  return {8, 0, true, source};
}

QuantizationConfig read_quantization(const json& object, const std::string& source) {
  MOXIN_CHECK(object.is_object(), "[checkpoint] ", source, " is ", describe_json(object),
              ", expected an object {\"bits\": 4|8, \"group_size\": 32|64|128}");
  const FieldReader reader(object, source, "");
  if (object.contains("quant_method")) return read_fp8_quantization(object, reader, source);
  const auto bits = reader.integer("bits", 1, 64);
  const auto group = reader.integer("group_size", 1, 1 << 20);
  MOXIN_CHECK(bits && (*bits == 4 || *bits == 8), reader.where("bits"),
              " must be 4 or 8 (MLX affine quantization)");
  MOXIN_CHECK(group && is_quant_group_size(static_cast<int>(*group)), reader.where("group_size"),
              " must be ", quant_group_sizes_text());
  return {static_cast<int>(*bits), static_cast<int>(*group), false, source};
}

// A window at least as long as the context never slides: attention is then plain causal.
void refuse_sliding_window(const FieldReader& dec, int64_t max_position) {
  const auto window = dec.integer("sliding_window", 1, INT32_MAX);
  MOXIN_CHECK(!window || *window >= max_position, dec.where("sliding_window"), " is ", *window,
              ": moxin does not implement sliding-window attention; accepted are null (absent) or a window >= "
              "max_position_embeddings (",
              max_position, "), which never slides");
}

// timm sizes the MLP as int(embed_dim * mlp_ratio).
ConfigJson::VitKwargs read_vit_kwargs(const json& kwargs, const std::string& path,
                                      const std::string& key) {
  MOXIN_CHECK(kwargs.is_object() || kwargs.is_null(), "[checkpoint] ", path, ": ", key, " is ",
              describe_json(kwargs), ", expected an object of timm.create_model kwargs");
  ConfigJson::VitKwargs out;
  out.key = key;
  if (kwargs.is_null()) return out;
  const FieldReader reader(kwargs, path, key + ".");
  out.embed_dim = reader.integer("embed_dim", 1, kMaxWidth);
  out.depth = reader.integer("depth", 1, kMaxDepth);
  out.num_heads = reader.integer("num_heads", 1, kMaxHeads);
  if (const auto ratio = reader.number("mlp_ratio", kMinMlpRatio, kMaxMlpRatio)) {
    MOXIN_CHECK(out.embed_dim, reader.where("mlp_ratio"), " needs embed_dim next to it");
    out.mlp_dim = static_cast<int64_t>(static_cast<double>(*out.embed_dim) * *ratio);
    MOXIN_CHECK(*out.mlp_dim >= 1, reader.where("mlp_ratio"), " is ", *ratio, ": embed_dim ", *out.embed_dim,
                " x mlp_ratio must give an MLP of at least one unit");
  }
  return out;
}

}  // namespace

ConfigJson read_config_json(const std::string& path) {
  const json root = read_json_file(path, "[checkpoint]");
  MOXIN_CHECK(root.is_object(), "[checkpoint] ", path, " is ", describe_json(root),
              ", expected a JSON object");
  ConfigJson out;
  out.path = path;
  const FieldReader top(root, path, "");
  const json* text_config = top.object("text_config");
  out.decoder_key_prefix = text_config ? "text_config." : "";
  const FieldReader dec(text_config ? *text_config : root, path, out.decoder_key_prefix);

  out.hidden = dec.integer("hidden_size", 1, kMaxWidth);
  out.layers = dec.integer("num_hidden_layers", 1, kMaxDepth);
  out.heads = dec.integer("num_attention_heads", 1, kMaxHeads);
  out.kv_heads = dec.integer("num_key_value_heads", 1, kMaxHeads);
  out.head_dim = dec.integer("head_dim", 1, kMaxWidth);
  out.intermediate = dec.integer("intermediate_size", 1, kMaxWidth);
  out.vocab = dec.integer("vocab_size", 1, kMaxTokenId + 1);
  out.max_position = dec.integer("max_position_embeddings", 1, kMaxPositions);
  out.rms_eps = dec.number("rms_norm_eps", kMinRmsEps, kMaxRmsEps);
  out.rope_theta = dec.number("rope_theta", kMinRopeTheta, kMaxRopeTheta);
  refuse_sliding_window(dec, out.max_position.value_or(DecoderConfig{}.max_position));
  // Token ids sit in text_config or at the top level depending on the converter.
  out.bos_id = dec.token_id("bos_token_id");
  if (!out.bos_id) out.bos_id = top.token_id("bos_token_id");
  out.eos_id = dec.token_id("eos_token_id");
  if (!out.eos_id) out.eos_id = top.token_id("eos_token_id");
  dec.require_absent("rope_scaling", "moxin implements plain RoPE (Moxin-7B uses no scaling)");
  dec.require_string("hidden_act", "silu");

  if (const json* kwargs = top.array("timm_model_kwargs")) {
    MOXIN_CHECK(kwargs->size() == 2, top.where("timm_model_kwargs"), " has ", kwargs->size(),
                " entries, expected 2 (featurizer, fused_featurizer)");
    out.dino = read_vit_kwargs((*kwargs)[0], path, "timm_model_kwargs[0]");
    out.siglip = read_vit_kwargs((*kwargs)[1], path, "timm_model_kwargs[1]");
  }
  if (const json* q = top.object("quantization"))
    out.quantization = read_quantization(*q, path + ": quantization");
  return out;
}

std::optional<QuantizationConfig> read_quantize_config(const std::string& path) {
  if (!std::filesystem::exists(path)) return std::nullopt;
  const json file = read_json_file(path, "[checkpoint]");
  // The seed crate (moxin-vlm-mlx save_quantized) nests the fields: {"quantization": {...}}.
  if (file.is_object() && file.contains("quantization")) {
    MOXIN_CHECK(!file.contains("bits") && !file.contains("group_size"), "[checkpoint] ", path,
                ": has both \"quantization\" and top-level bits/group_size; keep one of the two forms");
    return read_quantization(file["quantization"], path + ": quantization");
  }
  return read_quantization(file, path);
}

}  // namespace moxin
