// `moxin generate`: answer a question about an image (or a text-only prompt), streaming the
// text to stdout and the timings to stderr, or one JSON object with --json.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/command.hpp"
#include "cli/model_options.hpp"
#include "core/check.hpp"

namespace moxin::cli {
namespace {

struct GenerateArgs {
  ModelOptions model;
  PromptOptions prompt;
  GenerateOptions gen;
  bool json = false;
};

const char* finish_name(FinishReason r) {
  switch (r) {
    case FinishReason::Eos:
    case FinishReason::Stop:
      return "stop";
    case FinishReason::Length:
      return "length";
    case FinishReason::None:
      break;
  }
  return "none";
}

void run(const GenerateArgs& a) {
  const Prompt prompt = a.prompt.build();
  auto model = Model::load(a.model.model_dir, a.model.load_options());
  Generation gen = model->generate(prompt, a.gen);
  while (auto piece = gen.next()) {
    if (!a.json) {
      std::fwrite(piece->text.data(), 1, piece->text.size(), stdout);
      std::fflush(stdout);
    }
  }
  const Timings& t = gen.timings();
  if (a.json) {
    nlohmann::json out = {
        {"text", gen.text()},
        {"tokens", gen.tokens()},
        {"finish_reason", finish_name(gen.finish_reason())},
        {"timings",
         {{"load_ms", t.load_ms}, {"vision_ms", t.vision_ms}, {"prefill_ms", t.prefill_ms},
          {"decode_ms", t.decode_ms}, {"prompt_tokens", t.prompt_tokens},
          {"generated_tokens", t.generated_tokens}, {"decode_tokens_per_s", t.decode_tokens_per_s()}}}};
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("\n");
    std::fprintf(stderr,
                 "[moxin] load %.0f ms | vision %.1f ms | prefill %d tokens %.1f ms | decode %d tokens "
                 "%.2f tok/s | finish %s\n",
                 t.load_ms, t.vision_ms, t.prompt_tokens, t.prefill_ms, t.generated_tokens,
                 t.decode_tokens_per_s(), finish_name(gen.finish_reason()));
  }
}

const Command kGenerate("generate", [](CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* c = app.add_subcommand("generate", "Generate an answer about an image (or text only)");
  args->model.add_to(*c);
  args->prompt.add_to(*c);
  c->add_option("--max-tokens", args->gen.max_tokens, "Maximum generated tokens")->check(CLI::Range(0, 1 << 20));
  c->add_option("--temp", args->gen.temperature, "Sampling temperature (0 = greedy)");
  c->add_option("--top-k", args->gen.top_k, "Keep the k most likely tokens (0 = off)");
  c->add_option("--top-p", args->gen.top_p, "Nucleus sampling mass (1 = off)");
  c->add_option("--min-p", args->gen.min_p, "Drop tokens below min-p x the top probability");
  c->add_option("--repetition-penalty", args->gen.repetition_penalty, "Penalty for repeated tokens (1 = off)");
  c->add_option("--seed", args->gen.seed, "Sampling seed (same seed, same output)");
  c->add_option("--stop", args->gen.stop, "Stop before this string (repeatable)");
  c->add_flag("--json", args->json, "Print one JSON object with the text, token ids and timings");
  c->callback([args] { run(*args); });
});

}  // namespace
}  // namespace moxin::cli
