// A complete program on the public API only: caption an image, streaming the answer.
//   caption MODEL_DIR IMAGE [QUESTION] [cpu|cuda]
#include <cstdio>
#include <iostream>

#include "moxin/moxin.hpp"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL_DIR IMAGE [QUESTION] [cpu|cuda]\n", argv[0]);
    return 2;
  }
  try {
    moxin::LoadOptions options;
    if (argc > 4 && std::string(argv[4]) == "cuda") options.device = moxin::Device::CUDA;
    auto model = moxin::Model::load(argv[1], options);
    const std::string question = argc > 3 ? argv[3] : "Describe this image.";
    moxin::Generation gen = model->generate(moxin::Prompt::single(question, moxin::read_file(argv[2])),
                                            {.max_tokens = 128});
    while (auto piece = gen.next()) std::cout << piece->text << std::flush;
    std::cout << "\n";
    std::fprintf(stderr, "%d tokens, %.1f tok/s\n", gen.timings().generated_tokens,
                 gen.timings().decode_tokens_per_s());
  } catch (const moxin::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
