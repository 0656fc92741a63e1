// The engine benchmark behind `moxin bench`: every number comes with the bytes or FLOPs it
// moved and the ceiling measured in the same run (PERF.md's method).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/engine.hpp"

namespace moxin {

struct BenchOptions {
  int batch = 1;           // decode sequences stepping together
  int context = 1024;      // tokens already in each sequence's cache when decode is timed
  int prefill_tokens = 0;  // 0 = `context`; the timed single-sequence prefill length
  int decode_steps = 32;
  int runs = 5;            // timed repetitions of vision / prefill / first token (median)
  std::string image_path;  // for time-to-first-token from image bytes; empty = skip
  int ttft_prompt_tokens = 16;
  bool vision = true;
  uint64_t seed = 1;
};

struct BenchResult {
  std::string device;
  double bandwidth_gbps = 0;      // ceiling measured in this run
  double vision_ms = 0;           // both encoders + projector, batch 1
  double prefill_ms = 0;
  int prefill_tokens = 0;
  double prefill_tflops = 0;
  double ttft_ms = 0;             // image bytes -> first token (0 when no image given)
  int ttft_prompt_tokens = 0;     // image tokens + text tokens of that prompt
  int32_t first_token = -1;
  double decode_step_ms = 0;      // median over steps
  double decode_tok_s_per_seq = 0;
  double decode_tok_s_total = 0;
  double decode_bytes_per_step = 0;
  double decode_gbps = 0;
  double weight_bytes = 0;        // decoder weights streamed per step (embedding excluded)
  int batch = 0;
  int context = 0;
  double rss_after_load_mb = 0;  // resident set when the benchmark starts (weights loaded)
  double peak_rss_mb = 0;
  double device_memory_mb = 0;
};

BenchResult run_benchmark(Engine& engine, const BenchOptions& options);

}  // namespace moxin
