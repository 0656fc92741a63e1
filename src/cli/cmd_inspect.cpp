// `moxin inspect --model DIR [--json]`: loads a checkpoint (every tensor name, shape and dtype
// checked) and prints the configuration derived from it, or the first problem found.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/command.hpp"
#include "cli/model_options.hpp"
#include "cli/progress_bar.hpp"
#include "hub/resolve_model.hpp"
#include "io/checkpoint.hpp"

namespace moxin::cli {
namespace {

using nlohmann::ordered_json;

struct InspectArgs {
  std::string model_dir;
  bool json = false;
};

ordered_json vit_json(const VitConfig& c) {
  return {{"dim", c.dim},
          {"depth", c.depth},
          {"heads", c.heads},
          {"head_dim", c.head_dim},
          {"mlp_dim", c.mlp_dim},
          {"patch", c.patch},
          {"image_size", c.image_size},
          {"num_patches", c.num_patches},
          {"has_cls", c.has_cls},
          {"num_registers", c.num_registers},
          {"layerscale", c.layerscale},
          {"feature_layer", c.feature_layer()},
          {"ln_eps", c.ln_eps}};
}

// How many decoder linears are quantized, and with which parameters (MLX affine, or
// {"format": "fp8_e4m3", "linears": n} for FP8 per-channel).
ordered_json quantization_json(const DecoderWeights& d) {
  std::vector<const LinearWeight*> linears{&d.lm_head};
  for (const auto& l : d.layers)
    for (const LinearWeight* w : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down})
      linears.push_back(w);
  std::map<std::pair<int, int>, int> counts;  // (bits, group_size) -> linears
  int fp8 = 0;
  for (const LinearWeight* w : linears) {
    if (w->bits) ++counts[{w->bits, w->group_size}];
    if (w->is_fp8()) ++fp8;
  }
  ordered_json out = ordered_json::array();
  for (const auto& [key, n] : counts)
    out.push_back({{"bits", key.first}, {"group_size", key.second}, {"linears", n}});
  if (fp8) out.push_back({{"format", "fp8_e4m3"}, {"linears", fp8}});
  return out;
}

ordered_json checkpoint_json(const Checkpoint& ck) {
  const ModelConfig& c = ck.config;
  const DecoderConfig& d = c.decoder;
  ordered_json files = ordered_json::array();
  for (const auto& f : ck.store.files()) files.push_back(f->path());
  std::map<std::string, size_t> dtypes;
  for (const auto& name : ck.store.names())
    ++dtypes[std::string(dtype_name(ck.store.find(name)->dtype))];
  return {
      {"dir", ck.dir},
      {"files", files},
      {"tensors", ck.store.size()},
      {"total_bytes", ck.store.total_bytes()},
      {"dtypes", dtypes},
      {"dino", vit_json(c.dino)},
      {"siglip", vit_json(c.siglip)},
      {"projector", {{"in", c.projector_in}, {"hidden", c.projector_hidden}, {"out", d.hidden}}},
      {"decoder",
       {{"hidden", d.hidden},
        {"layers", d.layers},
        {"heads", d.heads},
        {"kv_heads", d.kv_heads},
        {"head_dim", d.head_dim},
        {"intermediate", d.intermediate},
        {"vocab", d.vocab},
        {"rms_eps", d.rms_eps},
        {"rope_theta", d.rope_theta},
        {"max_position", d.max_position},
        {"bos_id", d.bos_id},
        {"eos_id", d.eos_id},
        {"quantization", quantization_json(ck.decoder)}}}};
}

void print_text(const Checkpoint& ck) {
  const ModelConfig& c = ck.config;
  const DecoderConfig& d = c.decoder;
  std::printf("checkpoint %s: %zu tensors in %zu file(s), %.3f GB\n", ck.dir.c_str(),
              ck.store.size(), ck.store.files().size(),
              static_cast<double>(ck.store.total_bytes()) / 1e9);
  for (const auto& [name, vit] : {std::pair{"dino  ", &c.dino}, std::pair{"siglip", &c.siglip}})
    std::printf(
        "%s  dim %d, depth %d (features of block %d), %d heads x %d, mlp %d, patch %d, "
        "%d patches (%d px), cls %s, registers %d, layerscale %s\n",
        name, vit->dim, vit->depth, vit->feature_layer(), vit->heads, vit->head_dim, vit->mlp_dim,
        vit->patch, vit->num_patches, vit->image_size, vit->has_cls ? "yes" : "no",
        vit->num_registers, vit->layerscale ? "yes" : "no");
  std::printf("projector  %d -> %d -> %d -> %d\n", c.projector_in, c.projector_hidden, d.hidden,
              d.hidden);
  std::printf(
      "decoder  hidden %d, %d layers, %d heads x %d (kv %d), intermediate %d, vocab %d, "
      "rms_eps %g, rope_theta %g, max_position %d, bos %d, eos %d\n",
      d.hidden, d.layers, d.heads, d.head_dim, d.kv_heads, d.intermediate, d.vocab,
      static_cast<double>(d.rms_eps), static_cast<double>(d.rope_theta), d.max_position, d.bos_id,
      d.eos_id);
  const ordered_json json = checkpoint_json(ck);
  std::printf("dtypes  %s\n", json["dtypes"].dump().c_str());
  for (const auto& q : json["decoder"]["quantization"])
    if (q.contains("format"))
      std::printf("quantized  %d linears, fp8 E4M3, one scale per output channel\n", q["linears"].get<int>());
    else
      std::printf("quantized  %d linears, %d-bit, group size %d\n", q["linears"].get<int>(),
                  q["bits"].get<int>(), q["group_size"].get<int>());
}

const Command kInspect("inspect", [](CLI::App& app) {
  auto args = std::make_shared<InspectArgs>();
  CLI::App* c = app.add_subcommand(
      "inspect", "Check a checkpoint and print the configuration derived from it");
  c->add_option("--model", args->model_dir, kModelHelp)->required();
  c->add_flag("--json", args->json, "Print one JSON object");
  c->callback([args] {
    const Checkpoint ck = load_checkpoint(hub::resolve_model_dir(args->model_dir, stderr_progress(false)));
    if (args->json)
      std::printf("%s\n", checkpoint_json(ck).dump(2).c_str());
    else
      print_text(ck);
  });
});

}  // namespace
}  // namespace moxin::cli
