// load_checkpoint: config.json + safetensors -> named, shape-checked weights (docs/model.md section 1).
#include "io/checkpoint.hpp"

#include <filesystem>

#include "core/check.hpp"
#include "io/checkpoint_mapping.hpp"
#include "core/path_status.hpp"

namespace moxin {
namespace fs = std::filesystem;
namespace {

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// quantize_config.json and config.json's "quantization" may both exist; they must agree.
std::optional<QuantizationConfig> resolve_quantization(const std::string& dir,
                                                       const ConfigJson& json) {
  const auto file = read_quantize_config((fs::path(dir) / "quantize_config.json").string());
  const auto describe = [](const QuantizationConfig& q) {
    return q.fp8 ? std::string("fp8") : cat("bits ", q.bits, ", group_size ", q.group_size);
  };
  if (file && json.quantization)
    MOXIN_CHECK(file->bits == json.quantization->bits && file->group_size == json.quantization->group_size &&
                    file->fp8 == json.quantization->fp8,
                "[checkpoint] ", file->source, " (", describe(*file), ") contradicts ", json.quantization->source,
                " (", describe(*json.quantization), ")");
  return file ? file : json.quantization;
}

// Tensors a published checkpoint carries that inference never reads: the encoders' final
// norms and heads, the last ViT block (features come from the one before), RoPE buffers.
bool is_known_unused(const std::string& name, const Checkpoint& ck, const VisionPrefixes& vision,
                     const std::string& llm_prefix) {
  for (const auto& [prefix, vit] :
       {std::pair{vision.dino, &ck.config.dino}, std::pair{vision.siglip, &ck.config.siglip}}) {
    for (const char* part : {"norm.", "head.", "attn_pool."})
      if (starts_with(name, prefix + part)) return true;
    if (starts_with(name, cat(prefix, "blocks.", vit->depth - 1, "."))) return true;
  }
  return starts_with(name, llm_prefix) && ends_with(name, "rotary_emb.inv_freq");
}

void refuse_unexpected(const TensorBinder& b, const Checkpoint& ck, const VisionPrefixes& vision,
                       const std::string& llm_prefix) {
  std::vector<const TensorInfo*> unexpected;
  bool quantized = false;
  for (const TensorInfo* t : b.unused())
    if (!is_known_unused(t->name, ck, vision, llm_prefix)) {
      unexpected.push_back(t);
      quantized = quantized || ends_with(t->name, ".scales") || ends_with(t->name, ".biases") ||
                  ends_with(t->name, ".weight_scale");
    }
  if (unexpected.empty()) return;
  std::string list;
  constexpr size_t kShown = 10;
  for (size_t i = 0; i < std::min(unexpected.size(), kShown); ++i)
    list += cat(i ? ", " : "", "'", unexpected[i]->name, "' ", unexpected[i]->shape_str(), " in ",
                unexpected[i]->file);
  if (unexpected.size() > kShown) list += cat(", ... (", unexpected.size() - kShown, " more)");
  fail("[checkpoint] ", b.dir(), ": ", unexpected.size(), " unexpected tensor",
       unexpected.size() == 1 ? "" : "s", ": ", list,
       quantized ? ". Only the decoder's q/k/v/o/gate/up/down projections and lm_head may be "
                   "quantized"
                 : ". Is this a Moxin-7B VLM checkpoint (Hugging Face Moxin-7B-VLM-hf layout)?");
}

}  // namespace

Checkpoint load_checkpoint(const std::string& dir) {
  std::string why;
  const fs::file_status dir_status = path_status(dir, why);
  MOXIN_CHECK(fs::is_directory(dir_status), "[checkpoint] model directory '", dir, "' ",
              !why.empty() ? cat("cannot be read: ", why)
              : fs::exists(dir_status) ? "is not a directory"
                                       : "does not exist");
  const std::string config_path = (fs::path(dir) / "config.json").string();
  MOXIN_CHECK(fs::exists(path_status(config_path, why)), "[checkpoint] ", config_path,
              " not found: the Hugging Face checkpoint (Moxin-7B-VLM-hf) ships config.json next "
              "to the safetensors; copy it into ",
              dir);
  const ConfigJson json = read_config_json(config_path);
  const std::optional<QuantizationConfig> quant = resolve_quantization(dir, json);

  Checkpoint ck;
  ck.dir = dir;
  ck.store = TensorStore::open_dir(dir);
  TensorBinder b(ck.store, dir);
  const VisionPrefixes vision = vision_prefixes(b);
  ck.dino = map_vit(b, vision.dino, json, json.dino, ck.config.dino);
  ck.siglip = map_vit(b, vision.siglip, json, json.siglip, ck.config.siglip);
  MOXIN_CHECK(ck.config.dino.num_patches == ck.config.siglip.num_patches &&
                  ck.config.dino.patch == ck.config.siglip.patch,
              "[checkpoint] ", dir,
              ": the two encoders must see the same patch grid to be fused, but ", vision.dino,
              " has ", ck.config.dino.num_patches, " patches of ", ck.config.dino.patch, " px and ",
              vision.siglip, " ", ck.config.siglip.num_patches, " of ", ck.config.siglip.patch,
              " px");

  std::string llm_prefix;
  ck.decoder = map_decoder(b, json, quant ? &*quant : nullptr, ck.config.decoder, llm_prefix);
  ck.config.projector_in = ck.config.dino.dim + ck.config.siglip.dim;
  int64_t projector_hidden = 0;
  ck.projector =
      map_projector(b, ck.config.projector_in, ck.config.decoder.hidden, projector_hidden);
  ck.config.projector_hidden = static_cast<int>(projector_hidden);
  refuse_unexpected(b, ck, vision, llm_prefix);
  return ck;
}

}  // namespace moxin
