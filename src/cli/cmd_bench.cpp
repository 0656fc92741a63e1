// `moxin bench`: load time, vision, prefill, time to first token and batched decode on a real
// (or random full-size) checkpoint, each against the ceiling measured in the same run.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/command.hpp"
#include "cli/model_options.hpp"
#include "core/check.hpp"
#include "runtime/api_convert.hpp"
#include "runtime/benchmark.hpp"

namespace moxin::cli {
namespace {

struct BenchArgs {
  ModelOptions model;
  BenchOptions bench;
  bool json = false;
};

std::string cliff_note(const DecodeRun& d) {
  return d.costlier_than_batch ? cat("  ! costs more per token than batch ", d.costlier_than_batch) : "";
}

void print_table(const BenchResult& r, double load_ms) {
  std::printf("device            %s\n", r.device.c_str());
  std::printf("bandwidth ceiling %.1f GB/s (measured now)\n", r.bandwidth_gbps);
  std::printf("load              %.0f ms\n", load_ms);
  std::printf("kv cache          %s, %.0f bytes per token\n", r.kv_cache.c_str(), r.kv_bytes_per_token);
  if (r.vision_ms > 0) std::printf("vision (2 enc.)   %.2f ms\n", r.vision_ms);
  std::printf("prefill           %d tokens %.2f ms, %.2f TFLOP/s\n", r.prefill_tokens, r.prefill_ms,
              r.prefill_tflops);
  if (r.ttft_ms > 0)
    std::printf("first token       %.2f ms from image bytes (%d prompt tokens): image decode + encoders %.2f ms, "
                "prefill %.2f ms\n",
                r.ttft_ms, r.ttft_prompt_tokens, r.ttft_image_ms, r.ttft_prefill_ms);
  std::printf("decode, context %d (floor: weights once + every sequence's KV at the ceiling)\n", r.context);
  std::printf("%7s %10s %10s %12s %12s %10s %10s %8s\n", "batch", "ms/step", "serial ms",
              "tok/s/seq", "tok/s total", "GB/step", "floor ms", "of floor");
  for (const DecodeRun& d : r.decode)
    std::printf("%7d %10.3f %10.3f %12.2f %12.1f %10.2f %10.3f %7.1f%%%s\n", d.batch, d.step_ms,
                d.serial_ms, d.tok_s_per_seq, d.tok_s_total, d.bytes_per_step / 1e9, d.floor_ms,
                d.floor_ms > 0 ? 100.0 * d.floor_ms / d.step_ms : 0.0, cliff_note(d).c_str());
  for (const DecodeRun& d : r.decode)
    if (d.paired_share > 0)
      std::printf("batch %d, each step against a ceiling probed right after it: median %.1f%% of the floor "
                  "(probes %.1f-%.1f GB/s)\n",
                  d.batch, 100.0 * d.paired_share, d.probe_min_gbps, d.probe_max_gbps);
  std::printf("memory            RSS after load %.0f MB, peak RSS %.0f MB, device %.0f MB (weights %.0f, KV cache "
              "%.0f, the rest %.0f)\n",
              r.rss_after_load_mb, r.peak_rss_mb, r.device_memory_mb, r.device_weights_mb, r.device_kv_cache_mb,
              r.device_memory_mb - r.device_weights_mb - r.device_kv_cache_mb);
}

nlohmann::json to_json(const DecodeRun& d, double bandwidth_gbps) {
  return {{"batch", d.batch},
          {"decode_step_ms", d.step_ms},
          {"decode_serial_ms", d.serial_ms},
          {"decode_tok_s_per_seq", d.tok_s_per_seq},
          {"decode_tok_s_total", d.tok_s_total},
          {"decode_bytes_per_step", d.bytes_per_step},
          {"decode_gbps", d.gbps},
          {"decode_floor_ms", d.floor_ms},
          {"decode_share_of_ceiling", bandwidth_gbps > 0 ? d.gbps / bandwidth_gbps : 0.0},
          {"costlier_than_batch", d.costlier_than_batch},
          {"decode_paired_share", d.paired_share},
          {"decode_probe_min_gbps", d.probe_min_gbps},
          {"decode_probe_max_gbps", d.probe_max_gbps}};
}

// The first decode run's fields sit at the top level (what one --batch gives); every run is in
// "decode" as well.
nlohmann::json to_json(const BenchResult& r, double load_ms) {
  nlohmann::json j = {{"device", r.device},
                      {"bandwidth_ceiling_gbps", r.bandwidth_gbps},
                      {"load_ms", load_ms},
                      {"kv_cache", r.kv_cache},
                      {"kv_bytes_per_token", r.kv_bytes_per_token},
                      {"vision_ms", r.vision_ms},
                      {"prefill_tokens", r.prefill_tokens},
                      {"prefill_ms", r.prefill_ms},
                      {"prefill_tflops", r.prefill_tflops},
                      {"ttft_ms", r.ttft_ms},
                      {"ttft_image_ms", r.ttft_image_ms},
                      {"ttft_prefill_ms", r.ttft_prefill_ms},
                      {"ttft_prompt_tokens", r.ttft_prompt_tokens},
                      {"context", r.context},
                      {"weight_bytes", r.weight_bytes},
                      {"rss_after_load_mb", r.rss_after_load_mb},
                      {"peak_rss_mb", r.peak_rss_mb},
                      {"device_memory_mb", r.device_memory_mb},
                      {"device_weights_mb", r.device_weights_mb},
                      {"device_kv_cache_mb", r.device_kv_cache_mb}};
  j["decode"] = nlohmann::json::array();
  for (const DecodeRun& d : r.decode) j["decode"].push_back(to_json(d, r.bandwidth_gbps));
  if (!r.decode.empty()) j.update(j["decode"][0]);
  return j;
}

void run(BenchArgs& a) {
  const LoadOptions lo = a.model.load_options();
  const auto start = std::chrono::steady_clock::now();
  auto engine = Engine::load(a.model.model_dir, to_engine_options(lo));
  engine->backend().synchronize();
  const double load_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  const BenchResult r = run_benchmark(*engine, a.bench);
  if (a.json)
    std::printf("%s\n", to_json(r, load_ms).dump().c_str());
  else
    print_table(r, load_ms);
}

const Command kBench("bench", [](CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* c = app.add_subcommand("bench", "Measure load, vision, prefill, first token and decode speed");
  args->model.add_to(*c);
  c->add_option("--batch", args->bench.batches,
                "Sequences decoding together; a comma list (1,2,4,...) sweeps them in one run")
      ->delimiter(',')
      ->check(CLI::Range(1, 256));
  c->add_option("--context", args->bench.context, "Tokens in each sequence's cache during decode")
      ->check(CLI::Range(1, 1 << 20));
  c->add_option("--prefill-tokens", args->bench.prefill_tokens, "Timed prefill length (default: --context)")
      ->check(CLI::Range(0, 1 << 20));
  c->add_option("--decode-steps", args->bench.decode_steps, "Timed decode steps")->check(CLI::Range(1, 1 << 16));
  c->add_option("--runs", args->bench.runs, "Timed runs of vision/prefill/first token (median)")
      ->check(CLI::Range(1, 1000));
  c->add_option("--image", args->bench.image_path, "Image file for time-to-first-token from image bytes");
  c->add_option("--ttft-prompt-tokens", args->bench.ttft_prompt_tokens, "Question length for that")
      ->check(CLI::Range(1, 4096));
  c->add_flag("!--no-vision", args->bench.vision, "Skip the vision encoders");
  c->add_flag("--ceiling-each-step", args->bench.ceiling_each_step,
              "Probe the bandwidth ceiling after every decode step and report each step's share "
              "against it (for machines whose ceiling moves during a run)");
  c->add_flag("--json", args->json, "Print one JSON object");
  c->callback([args] { run(*args); });
});

}  // namespace
}  // namespace moxin::cli
