// The engine benchmark behind `moxin bench`: every number comes with the bytes or FLOPs it
// moved and the ceiling measured in the same run (PERF.md's method).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/engine.hpp"

namespace moxin {

struct BenchOptions {
  std::vector<int> batches{1};  // decode sequences stepping together: one decode run per entry
  int context = 1024;      // tokens already in each sequence's cache when decode is timed
  int prefill_tokens = 0;  // 0 = `context`; the timed single-sequence prefill length
  int decode_steps = 32;
  int runs = 5;            // timed repetitions of vision / prefill / first token (median)
  std::string image_path;  // for time-to-first-token from image bytes; empty = skip
  int ttft_prompt_tokens = 16;
  bool vision = true;
  // After every timed decode step, a short ceiling probe (256 MiB, 3 passes), so that each
  // step's share of the floor is against the ceiling of its moment: for machines whose read
  // ceiling changes within a run (docs/cpu-notes.md: a VM's two modes).
  bool ceiling_each_step = false;
  uint64_t seed = 1;
};

// One decode run: `batch` sequences of `context` cached tokens stepping together.
struct DecodeRun {
  int batch = 0;
  // Median over steps, each step's inputs the greedy tokens of the one before, as the scheduler
  // runs them on this backend: on a GPU the next step is issued before the host reads this
  // one's tokens, so a step costs the time between two reads.
  double step_ms = 0;
  double serial_ms = 0;          // the same, each step issued only once the last one's tokens are read
  double tok_s_per_seq = 0;
  double tok_s_total = 0;
  double bytes_per_step = 0;     // weights once + every sequence's KV
  double gbps = 0;
  double floor_ms = 0;           // bytes_per_step at the measured ceiling (0: no ceiling)
  // A smaller batch of the same run produced tokens more cheaply than this one (ms per token):
  // a throughput cliff. The smallest such batch, 0 when none.
  int costlier_than_batch = 0;
  // With ceiling_each_step: the median over serial steps of the step's GB/s over the probe's
  // after it, and the probes' range (0 without).
  double paired_share = 0;
  double probe_min_gbps = 0, probe_max_gbps = 0;
};

struct BenchResult {
  std::string device;
  std::string kv_cache;            // the KV cache's element type: F32, BF16 or fp8 e4m3
  double kv_bytes_per_token = 0;   // over all layers, K and V
  double bandwidth_gbps = 0;      // ceiling measured in this run
  double vision_ms = 0;           // both encoders + projector, batch 1
  double prefill_ms = 0;
  int prefill_tokens = 0;
  double prefill_tflops = 0;
  double ttft_ms = 0;             // image bytes -> first token (0 when no image given)
  double ttft_image_ms = 0;       // of which: decode, preprocessing and both encoders (to a sync)
  double ttft_prefill_ms = 0;     //           and the decoder over the prompt, logits on the host
  int ttft_prompt_tokens = 0;     // image tokens + text tokens of that prompt
  int32_t first_token = -1;
  std::vector<DecodeRun> decode;  // one per BenchOptions::batches entry, in that order
  double weight_bytes = 0;        // decoder weights streamed per step (embedding excluded)
  int context = 0;
  double rss_after_load_mb = 0;  // resident set when the benchmark starts (weights loaded)
  double peak_rss_mb = 0;
  double device_memory_mb = 0;
  double device_weights_mb = 0;   // of which the model's weights ...
  double device_kv_cache_mb = 0;  // ... and the KV cache (the rest: workspaces, scratch, graphs)
};

BenchResult run_benchmark(Engine& engine, const BenchOptions& options);

}  // namespace moxin
