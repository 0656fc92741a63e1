// Several images captioned at once on the public API only: each on its own thread through
// Model::submit(), which batches all of them into the same decoder steps.
//   caption_many MODEL_DIR IMAGE... [--cuda]
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "moxin/moxin.hpp"

int main(int argc, char** argv) {
  std::vector<std::string> images;
  moxin::LoadOptions options;
  for (int i = 2; i < argc; ++i) {
    if (std::string(argv[i]) == "--cuda") {
      options.device = moxin::Device::CUDA;
    } else {
      images.push_back(argv[i]);
    }
  }
  if (argc < 3 || images.empty()) {
    std::fprintf(stderr, "usage: %s MODEL_DIR IMAGE... [--cuda]\n", argv[0]);
    return 2;
  }
  try {
    auto model = moxin::Model::load(argv[1], options);
    std::vector<std::string> answers(images.size()), errors(images.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < images.size(); ++i) {
      threads.emplace_back([&, i] {
        try {
          moxin::Generation gen = model->submit(
              moxin::Prompt::single("Describe this image.", moxin::read_file(images[i])), {.max_tokens = 64});
          while (gen.next()) {
          }
          answers[i] = gen.text();
        } catch (const moxin::Error& e) {
          errors[i] = e.what();
        }
      });
    }
    for (std::thread& t : threads) t.join();
    for (size_t i = 0; i < images.size(); ++i)
      std::printf("%s: %s\n", images[i].c_str(), errors[i].empty() ? answers[i].c_str() : ("error: " + errors[i]).c_str());
  } catch (const moxin::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
