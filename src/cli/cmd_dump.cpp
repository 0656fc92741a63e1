// `moxin dump`: run one prompt through the whole VLM and write every intermediate the parity
// tests compare with the PyTorch reference (input_ids, both encoders' features, the projected
// image tokens, the last position's logits) as f32/i32 safetensors. --hidden-states adds every
// decoder layer's output and the logits of every position (cmd_dump_hidden.hpp).
#include <CLI/CLI.hpp>

#include "cli/cmd_dump_hidden.hpp"
#include "cli/command.hpp"
#include "cli/model_options.hpp"
#include "core/check.hpp"
#include "io/safetensors_writer.hpp"
#include "runtime/api_convert.hpp"
#include "runtime/engine.hpp"
#include "runtime/session.hpp"

namespace moxin::cli {
namespace {

struct DumpArgs {
  ModelOptions model;
  PromptOptions prompt;
  std::string out;
  bool hidden_states = false;
};

void add_tensor(SafetensorsWriter& w, Backend& backend, const std::string& name, const Tensor& t) {
  std::vector<float> host(static_cast<size_t>(t.numel()));
  backend.to_host_f32(t, host.data());
  w.add_f32(name, {t.rows(), t.cols()}, host.data());
}

void run(const DumpArgs& a) {
  const Prompt prompt = a.prompt.build();
  const LoadOptions lo = a.model.load_options();
  MOXIN_CHECK(!a.hidden_states || prompt.image.empty(),
              "[dump] --hidden-states takes a text-only prompt; drop --image");
  auto engine = Engine::load(a.model.model_dir, to_engine_options(lo));
  Session session(*engine, lo.max_image_pixels);
  const PrefillResult r = session.prefill(to_chat_turns(prompt), prompt.image);

  SafetensorsWriter w;
  w.add("input_ids", DType::I32, {static_cast<int64_t>(r.input_ids.size())}, r.input_ids.data());
  if (r.image) {
    add_tensor(w, engine->backend(), "dino_features", r.image->dino);
    add_tensor(w, engine->backend(), "siglip_features", r.image->siglip);
    add_tensor(w, engine->backend(), "projected", r.image->projected);
  }
  w.add_f32("logits_last", {static_cast<int64_t>(r.logits.size())}, r.logits.data());
  if (a.hidden_states) add_hidden_states(w, *engine, r.input_ids);
  w.write(a.out);
}

const Command kDump("dump", [](CLI::App& app) {
  auto args = std::make_shared<DumpArgs>();
  CLI::App* c = app.add_subcommand("dump", "Write the model's intermediates for one prompt (parity checks)");
  args->model.add_to(*c);
  args->prompt.add_to(*c);
  c->add_option("--out", args->out, "Output .safetensors file")->required();
  c->add_flag("--hidden-states", args->hidden_states,
              "Also write each decoder layer's output and every position's logits (text-only prompts)");
  c->callback([args] { run(*args); });
});

}  // namespace
}  // namespace moxin::cli
