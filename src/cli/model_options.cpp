#include "cli/model_options.hpp"

#include <CLI/CLI.hpp>

#include "cli/progress_bar.hpp"
#include "core/check.hpp"
#include "io/quant_group_sizes.hpp"
#include "runtime/default_prompt.hpp"

namespace moxin::cli {

const char* const kModelHelp =
    "Checkpoint directory (safetensors + config.json + tokenizer.json), or a Hugging Face id ORG/NAME[@REVISION] "
    "(found in the Hugging Face cache, downloaded into it when missing)";

void ModelOptions::add_to(CLI::App& command) {
  command.add_option("--model", model_dir, kModelHelp)->required();
  command.add_option("--device", device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  command.add_option("--threads", threads, "CPU threads (0 = all cores)")->check(CLI::Range(0, 4096));
  command.add_option("--gpu", gpu, "CUDA device ordinal")->check(CLI::Range(0, 64));
  command.add_option("--max-context", max_context, "KV cache capacity in tokens")
      ->check(CLI::Range(1, 1 << 20));
  command.add_option("--max-pixels", max_pixels, "Refuse images with more pixels than this")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 40));
  command.add_option("--quantize", quantize,
                     "Quantize the decoder while loading: 8 or 4 bits (MLX affine), fp8 (E4M3, per-channel "
                     "scales) or 0 (as stored)")
      ->check(CLI::IsMember({"0", "4", "8", "fp8"}));
  command.add_option("--group-size", group_size, "Inputs per quantization group with --quantize")
      ->check(CLI::IsMember(quant_group_size_list()));
  command.add_option("--kv-cache", kv_cache,
                     "KV cache precision: auto (f32 on the CPU, bf16 on CUDA) or fp8 (E4M3 with a power-of-two "
                     "scale per head and token: half of bf16's memory)")
      ->check(CLI::IsMember({"auto", "fp8"}));
  command.add_flag("--quiet", quiet, "No progress bars or summaries (download, upload, quantize) on stderr");
}

LoadOptions ModelOptions::load_options() const {
  LoadOptions o;
  o.device = device == "cuda" ? Device::CUDA : Device::CPU;
  o.threads = threads;
  o.gpu = gpu;
  o.max_context = max_context;
  o.max_image_pixels = max_pixels;
  o.quantize_fp8 = quantize == "fp8";
  o.quantize_bits = o.quantize_fp8 ? 0 : std::stoi(quantize);
  o.quantize_group_size = group_size;
  o.kv_cache_fp8 = kv_cache == "fp8";
  o.progress = stderr_progress(quiet);
  return o;
}

void PromptOptions::add_to(CLI::App& command) {
  command.add_option("--image", image, "Image file (JPEG, PNG, WebP, GIF, BMP); omit for text only");
  command.add_option("--prompt", prompts,
                     "The question; repeat for a multi-turn conversation (default with --image: \"" +
                         std::string(kDefaultImagePrompt) + "\")");
  command.add_option("--answer", answers, "The model's earlier answers, one per earlier --prompt");
}

Prompt PromptOptions::build() const {
  // The seed crate's `generate` describes the image when no question is given; users keep that.
  MOXIN_CHECK(!prompts.empty() || !image.empty(),
              "[prompt] nothing to answer: give --prompt \"QUESTION\", or --image FILE to get the default "
              "question \"", kDefaultImagePrompt, "\"");
  const std::vector<std::string> questions =
      prompts.empty() ? std::vector<std::string>{kDefaultImagePrompt} : prompts;
  MOXIN_CHECK(answers.size() + 1 == questions.size(), "[prompt] a conversation of ", questions.size(),
              " --prompt needs ", questions.size() - 1, " --answer (one per earlier turn), got ",
              answers.size());
  Prompt p;
  for (size_t i = 0; i < questions.size(); ++i)
    p.turns.push_back({questions[i], i < answers.size() ? answers[i] : std::string()});
  if (!image.empty()) p.image = read_file(image);
  return p;
}

}  // namespace moxin::cli
