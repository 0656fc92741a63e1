// Options shared by every subcommand that loads a model (generate, dump, bench, serve).
// --model takes a checkpoint directory or a Hugging Face id (ORG/NAME[@REVISION]).
#pragma once

#include <string>
#include <vector>

#include "moxin/moxin.hpp"

namespace CLI {
class App;
}

namespace moxin::cli {

// The --model help shared by every subcommand taking one.
extern const char* const kModelHelp;

struct ModelOptions {
  std::string model_dir;
  std::string device = "cpu";
  int threads = 0;
  int gpu = 0;
  int max_context = 4096;
  uint64_t max_pixels = 89478485;
  std::string quantize = "0";  // "0", "8", "4" or "fp8": quantize the decoder at load time
  std::string kv_cache = "auto";  // "auto" or "fp8": the KV cache's precision
  int group_size = 64;
  bool quiet = false;  // no progress on stderr

  void add_to(CLI::App& command);
  LoadOptions load_options() const;  // validates; throws moxin::Error on bad values; progress on stderr unless quiet
};

// --image, --prompt (repeatable: a multi-turn conversation) and --answer.
struct PromptOptions {
  std::string image;
  std::vector<std::string> prompts;
  std::vector<std::string> answers;  // one per earlier --prompt

  void add_to(CLI::App& command);
  Prompt build() const;  // reads the image file; throws moxin::Error on a bad combination
};

}  // namespace moxin::cli
