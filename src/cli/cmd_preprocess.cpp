// `moxin preprocess --image PATH --out FILE.safetensors [--max-pixels N] [--size S]`: decodes
// one image and writes the vision tower's inputs exactly as the engine computes them
// (docs/model.md section 2): `resized` (U8 [S,S,3]), `dino` and `siglip` (F32 [1,S,S,3], NHWC).
#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "cli/command.hpp"
#include "image/image.hpp"
#include "io/safetensors_writer.hpp"

namespace moxin::cli {
namespace {

struct PreprocessArgs {
  std::string image;
  std::string out;
  uint64_t max_pixels = DecodeLimits{}.max_pixels;
  int size = 224;
};

void run(const PreprocessArgs& a) {
  const PreprocessedImage pre = decode_and_preprocess(read_image_file(a.image), DecodeLimits{a.max_pixels}, a.image, a.size);
  const int64_t s = a.size;
  SafetensorsWriter w;
  w.add("resized", DType::U8, {s, s, 3}, pre.resized.data());
  w.add_f32("dino", {1, s, s, 3}, pre.dino.data());
  w.add_f32("siglip", {1, s, s, 3}, pre.siglip.data());
  w.set_metadata("source_width", std::to_string(pre.source_width));
  w.set_metadata("source_height", std::to_string(pre.source_height));
  w.write(a.out);
}

const Command kPreprocess("preprocess", [](CLI::App& app) {
  auto args = std::make_shared<PreprocessArgs>();
  CLI::App* c = app.add_subcommand(
      "preprocess", "Decode an image and write its resized and normalized vision inputs");
  c->add_option("--image", args->image, "Input image (JPEG, PNG, WebP, GIF or BMP)")->required();
  c->add_option("--out", args->out, "Output .safetensors file")->required();
  c->add_option("--max-pixels", args->max_pixels,
                "Refuse images with more pixels than this (decompression-bomb guard)")
      ->check(CLI::PositiveNumber);
  c->add_option("--size", args->size, "Output width and height")->check(CLI::Range(1, 4096));
  c->callback([args] { run(*args); });
});

}  // namespace
}  // namespace moxin::cli
