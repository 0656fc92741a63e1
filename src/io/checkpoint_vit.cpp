// Maps one timm ViT (DINOv2-reg4 or SigLIP); which one is read off the tensors present.
#include "core/check.hpp"
#include "io/checkpoint_mapping.hpp"

namespace moxin {
namespace {

constexpr int kPublishedHeads = 16;  // both encoders; no tensor records it

// The seed crate (moxin-vlm-mlx) numbers the encoders instead of naming them.
constexpr const char* kSeedDinoPrefix = "vision_backbone.featurizer.0.";
constexpr const char* kSeedSiglipPrefix = "vision_backbone.featurizer.1.";

// timm's fused attn.qkv [3 * dim, dim], or the seed crate's split q_proj/k_proj/v_proj
// stacked into it (rows q, then k, then v: timm's order).
LinearWeight map_qkv(TensorBinder& b, const std::string& p, int64_t dim) {
  const std::string fused = p + "attn.qkv";
  if (b.pick_spelling({fused + ".weight", p + "attn.q_proj.weight"}) == fused + ".weight")
    return b.dense_linear(fused, 3 * dim, dim, true);
  std::vector<const TensorInfo*> weights, biases;
  for (const char* part : {"q_proj", "k_proj", "v_proj"}) {
    const LinearWeight l = b.dense_linear(p + "attn." + part, dim, dim, true);
    weights.push_back(l.weight);
    biases.push_back(l.bias);
  }
  LinearWeight w;
  w.weight = b.store().concatenated(weights, fused + ".weight");
  w.bias = b.store().concatenated(biases, fused + ".bias");
  w.out_features = 3 * dim;
  w.in_features = dim;
  return w;
}

VitBlockWeights map_block(TensorBinder& b, const std::string& p, int64_t dim, int64_t mlp_dim,
                          const std::string& ls_suffix) {
  VitBlockWeights w;
  w.norm1 = b.norm(p + "norm1", dim, true);
  w.norm2 = b.norm(p + "norm2", dim, true);
  w.qkv = map_qkv(b, p, dim);
  const std::string proj = b.pick_spelling({p + "attn.proj.weight", p + "attn.out_proj.weight"});
  w.proj = b.dense_linear(proj.substr(0, proj.size() - std::string(".weight").size()), dim, dim, true);
  w.fc1 = b.dense_linear(p + "mlp.fc1", mlp_dim, dim, true);
  w.fc2 = b.dense_linear(p + "mlp.fc2", dim, mlp_dim, true);
  if (!ls_suffix.empty()) {
    w.ls1 = &b.shaped(p + "ls1." + ls_suffix, {dim});
    w.ls2 = &b.shaped(p + "ls2." + ls_suffix, {dim});
  }
  return w;
}

}  // namespace

VisionPrefixes vision_prefixes(const TensorBinder& b) {
  const auto pick = [&](const std::string& published, const std::string& seed) {
    const std::string patch = "patch_embed.proj.weight";
    return b.pick_spelling({published + patch, seed + patch}) == published + patch ? published : seed;
  };
  return {pick(kDinoPrefix, kSeedDinoPrefix), pick(kSiglipPrefix, kSeedSiglipPrefix)};
}

VitWeights map_vit(TensorBinder& b, const std::string& prefix, const ConfigJson& json,
                   const ConfigJson::VitKwargs& kwargs, VitConfig& config) {
  VitWeights w;
  const TensorInfo& conv =
      b.ranked(prefix + "patch_embed.proj.weight", 4, "[dim, 3, patch, patch]");
  const int64_t dim = conv.shape[0];
  const int64_t patch = conv.shape[2];
  b.expect_shape(conv, {dim, 3, patch, patch});
  w.patch_weight = &conv;
  w.patch_bias = &b.shaped(prefix + "patch_embed.proj.bias", {dim});
  w.patch_linear.weight = b.store().reshaped(conv, {dim, 3 * patch * patch});
  w.patch_linear.bias = w.patch_bias;
  w.patch_linear.out_features = dim;
  w.patch_linear.in_features = 3 * patch * patch;

  const TensorInfo& pos = b.ranked(prefix + "pos_embed", 3, cat("[1, patches, ", dim, "]"));
  const int64_t patches = pos.shape[1];
  b.expect_shape(pos, {1, patches, dim});
  int64_t grid = 0;
  while (grid * grid < patches) ++grid;
  MOXIN_CHECK(grid * grid == patches && patches > 0, "[checkpoint] ", pos.file, ": tensor '",
              pos.name, "' has ", patches, " positions, expected a square grid (16 x 16 = 256)");
  w.pos_embed = &pos;

  w.cls_token = b.shaped_if_present(prefix + "cls_token", {1, 1, dim});
  const std::string reg_name = b.pick_spelling({prefix + "reg_token", prefix + "register_tokens"});
  if (b.has(reg_name)) {
    const TensorInfo& reg = b.ranked(reg_name, 3, cat("[1, registers, ", dim, "]"));
    b.expect_shape(reg, {1, reg.shape[1], dim});
    w.reg_token = &reg;
  }

  const int depth = b.count_indexed(prefix + "blocks.");
  MOXIN_CHECK(depth >= 2, "[checkpoint] ", b.dir(), ": '", prefix, "blocks.N.*' holds ", depth,
              " blocks; the features come from the second-to-last block, so at least 2 are needed",
              depth == 0 ? cat(" (missing tensor '", prefix, "blocks.0.attn.qkv.weight')") : "");
  const std::string first = prefix + "blocks.0.";
  const std::string ls_name = b.pick_spelling({first + "ls1.scale_factor", first + "ls1.gamma"});
  const std::string ls_suffix = b.has(ls_name) ? ls_name.substr(ls_name.rfind('.') + 1) : "";
  const int64_t mlp_dim =
      b.ranked(first + "mlp.fc1.weight", 2, cat("[mlp_dim, ", dim, "]")).shape[0];
  cross_check(json, kwargs.embed_dim, dim, kwargs.key + ".embed_dim",
              cat("'", conv.name, "' is ", conv.shape_str()));
  cross_check(json, kwargs.depth, depth, kwargs.key + ".depth",
              cat("'", prefix, "blocks.N.*' exist for N = 0..", depth - 1));
  cross_check(json, kwargs.mlp_dim, mlp_dim, kwargs.key + ".mlp_ratio x embed_dim",
              cat("'", first, "mlp.fc1.weight' has ", mlp_dim, " rows"));

  config.dim = static_cast<int>(dim);
  config.depth = depth;
  config.heads = static_cast<int>(kwargs.num_heads.value_or(kPublishedHeads));
  MOXIN_CHECK(dim % config.heads == 0, "[checkpoint] ", b.dir(), ": ", prefix, " has width ", dim,
              ", not divisible into ", config.heads, " heads",
              kwargs.num_heads ? cat(" (", json.path, " ", kwargs.key, ".num_heads)")
                               : std::string(" (the published head count; set num_heads in "
                                             "config.json timm_model_kwargs)"));
  config.head_dim = static_cast<int>(dim / config.heads);
  config.mlp_dim = static_cast<int>(mlp_dim);
  config.patch = static_cast<int>(patch);
  config.num_patches = static_cast<int>(patches);
  config.image_size = static_cast<int>(grid * patch);
  config.has_cls = w.cls_token != nullptr;
  config.num_registers = w.reg_token ? static_cast<int>(w.reg_token->shape[1]) : 0;
  config.layerscale = !ls_suffix.empty();

  // The last block is never run (features are the second-to-last block's output).
  for (int i = 0; i <= config.feature_layer(); ++i)
    w.blocks.push_back(map_block(b, cat(prefix, "blocks.", i, "."), dim, mlp_dim, ls_suffix));
  return w;
}

}  // namespace moxin
