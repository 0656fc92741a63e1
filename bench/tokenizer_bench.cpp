// Tokenizer throughput on long inputs (Google Benchmark): mixed scripts and emoji, one long run
// of a single letter, one long run of spaces. The BPE merge loop must stay near-linear in the
// input length: a quadratic one takes minutes on these inputs.
//   build/bench/tokenizer_bench [--benchmark_filter=...]   (MOXIN_TOKENIZER_FIXTURE: another tokenizer.json)
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "text/tokenizer.hpp"

namespace {

const moxin::Tokenizer& tokenizer() {
  static const moxin::Tokenizer tok = [] {
    if (const char* env = std::getenv("MOXIN_TOKENIZER_FIXTURE")) return moxin::Tokenizer::from_file(env);
    const auto repo = std::filesystem::path(__FILE__).parent_path().parent_path();
    return moxin::Tokenizer::from_file((repo / "tests" / "fixtures" / "tokenizer" / "moxin-vlm.tokenizer.json").string());
  }();
  return tok;
}

std::string input(int kind) {
  if (kind == 1) return std::string(100000, 'a');
  if (kind == 2) return std::string(100000, ' ');
  const std::vector<std::string> alphabet = {"a", "b", "the ", " ", "\n", "é", "日", "本", "😀", "ع", "q", "z", "  "};
  std::mt19937 rng(7);
  std::string mixed;
  while (mixed.size() < 200000) mixed += alphabet[rng() % alphabet.size()];
  return mixed;
}

void BM_EncodeLong(benchmark::State& state) {
  const std::string text = input(static_cast<int>(state.range(0)));
  size_t ids = 0;
  for (auto _ : state) ids = tokenizer().encode(text).size();
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["ids"] = static_cast<double>(ids);
}
BENCHMARK(BM_EncodeLong)->ArgName("mixed0_letters1_spaces2")->DenseRange(0, 2)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
