// The host half of the first token (Google Benchmark): decoding the request's image and the
// Pillow-exact preprocessing (bicubic resize to the encoders' size, both normalizations), which
// run on the CPU before the GPU sees anything. The GPU machine's `moxin bench --image` measures
// the whole first token; this separates what the CPU adds to it.
//   build/bench/image_bench IMAGE [--benchmark_filter=...]   (e.g. bench/run_gpu.sh's 640x480 JPEG)
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "image/image.hpp"

namespace {

std::vector<uint8_t>& image_bytes() {
  static std::vector<uint8_t> bytes;
  return bytes;
}

void BM_Decode(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(moxin::decode_image(image_bytes(), {}, "bench image"));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * image_bytes().size()));
}
BENCHMARK(BM_Decode)->Unit(benchmark::kMillisecond);

void BM_Preprocess(benchmark::State& state) {
  const moxin::Image image = moxin::decode_image(image_bytes(), {}, "bench image");
  for (auto _ : state) benchmark::DoNotOptimize(moxin::preprocess_image(image, static_cast<int>(state.range(0))));
}
BENCHMARK(BM_Preprocess)->Arg(224)->Arg(384)->Unit(benchmark::kMillisecond);

// The two steps one after the other, then as the engine runs them: decode_and_preprocess, whose
// first resize pass works on bands of a JPEG's rows while the rest decodes.
void BM_DecodeThenPreprocess(benchmark::State& state) {
  for (auto _ : state)
    benchmark::DoNotOptimize(
        moxin::preprocess_image(moxin::decode_image(image_bytes(), {}, "bench image"), static_cast<int>(state.range(0))));
}
BENCHMARK(BM_DecodeThenPreprocess)->Arg(224)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_DecodeAndPreprocess(benchmark::State& state) {
  for (auto _ : state)
    benchmark::DoNotOptimize(
        moxin::decode_and_preprocess(image_bytes(), {}, "bench image", static_cast<int>(state.range(0))));
}
BENCHMARK(BM_DecodeAndPreprocess)->Arg(224)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s IMAGE [--benchmark_...]: an image file to decode and preprocess\n", argv[0]);
    return 2;
  }
  std::ifstream in(argv[1], std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "image_bench: cannot read %s\n", argv[1]);
    return 2;
  }
  image_bytes().assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
