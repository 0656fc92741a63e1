#include "runtime/benchmark.hpp"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <memory>
#include <span>
#include <random>

#include "core/check.hpp"
#include "moxin/moxin.hpp"
#include "runtime/session.hpp"

namespace moxin {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

double median(std::vector<double> v) {
  MOXIN_CHECK(!v.empty(), "[bench] nothing was timed");
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// A /proc/self/status memory field (VmHWM: peak resident set, VmRSS: current), in MB; 0 where
// /proc is unavailable.
double status_mb(const std::string& field) {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == field) {
      double kb = 0;
      status >> kb;
      return kb / 1024.0;
    }
    status.ignore(1 << 12, '\n');
  }
  return 0;
}

// Multiply-adds x 2 of the decoder over T new tokens after `past` cached ones (causal).
double prefill_flops(const DecoderConfig& c, double tokens, double past) {
  const double per_token_linear = 2.0 * c.layers *
      (double(c.hidden) * (c.heads + 2.0 * c.kv_heads) * c.head_dim + double(c.heads) * c.head_dim * c.hidden +
       3.0 * c.hidden * c.intermediate) + 2.0 * c.hidden * c.vocab / tokens;  // lm_head: last token only
  const double attended = tokens * past + tokens * (tokens + 1) / 2.0;
  const double attention = 4.0 * c.layers * double(c.heads) * c.head_dim * attended;
  return per_token_linear * tokens + attention;
}

std::vector<int32_t> random_ids(std::mt19937_64& rng, int n, int vocab) {
  std::uniform_int_distribution<int32_t> pick(3, std::min(vocab, 32000) - 1);  // no control ids
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = pick(rng);
  return ids;
}

// Fills a fresh sequence with `tokens` random text tokens, in chunks the KV cache accepts.
void prefill_random(Engine& engine, SequenceState& seq, std::mt19937_64& rng, int tokens) {
  constexpr int kChunk = 2048;
  for (int done = 0; done < tokens; done += kChunk) {
    const auto ids = random_ids(rng, std::min(kChunk, tokens - done), engine.config().decoder.vocab);
    SequenceChunk chunk{&seq, engine.embed(ids)};
    engine.step(std::span<SequenceChunk>(&chunk, 1));
  }
}

void bench_vision(Engine& engine, const BenchOptions& o, std::mt19937_64& rng, BenchResult& r) {
  const int size = engine.config().dino.image_size;
  std::normal_distribution<float> normal(0.0f, 1.0f);  // normalized pixels are ~N(0, 1)
  std::vector<float> dino(static_cast<size_t>(size) * size * 3), siglip(dino.size());
  for (auto& v : dino) v = normal(rng);
  for (auto& v : siglip) v = normal(rng);
  std::vector<double> times;
  for (int i = 0; i <= o.runs; ++i) {
    const auto start = Clock::now();
    engine.encode_images(dino, siglip, 1);
    engine.backend().synchronize();
    if (i > 0) times.push_back(ms_since(start));  // the first run warms up
  }
  r.vision_ms = median(times);
}

void bench_prefill(Engine& engine, const BenchOptions& o, std::mt19937_64& rng, BenchResult& r) {
  r.prefill_tokens = o.prefill_tokens > 0 ? o.prefill_tokens : o.context;
  std::vector<double> times;
  for (int i = 0; i <= o.runs; ++i) {
    const auto ids = random_ids(rng, r.prefill_tokens, engine.config().decoder.vocab);
    SequenceState seq;
    const auto start = Clock::now();
    SequenceChunk chunk{&seq, engine.embed(ids)};
    Tensor logits = engine.step(std::span<SequenceChunk>(&chunk, 1));
    engine.backend().synchronize();
    if (i > 0) times.push_back(ms_since(start));
    engine.release(seq);
  }
  r.prefill_ms = median(times);
  r.prefill_tflops = prefill_flops(engine.config().decoder, r.prefill_tokens, 0) / (r.prefill_ms * 1e9);
}

void bench_first_token(Engine& engine, const BenchOptions& o, std::mt19937_64& rng, BenchResult& r) {
  const std::vector<uint8_t> image = read_file(o.image_path);
  std::vector<double> times, image_times, prefill_times;
  for (int i = 0; i <= o.runs; ++i) {
    // A question of about ttft_prompt_tokens tokens (re-tokenizing decoded ids may merge some).
    std::string question;
    for (int32_t id : random_ids(rng, o.ttft_prompt_tokens, engine.config().decoder.vocab))
      question += engine.tokenizer().decode(std::vector<int32_t>{id});
    const auto start = Clock::now();
    Session session(engine, LoadOptions{}.max_image_pixels);
    PrefillResult p = session.prefill({{question, {}}}, image);
    // Greedy: the first token is the argmax, part of the measured path.
    r.first_token = static_cast<int32_t>(std::max_element(p.logits.begin(), p.logits.end()) - p.logits.begin());
    if (i > 0) {
      times.push_back(ms_since(start));
      image_times.push_back(p.vision_ms);
      prefill_times.push_back(p.prefill_ms);
    }
    r.ttft_prompt_tokens = p.prompt_tokens;
  }
  r.ttft_ms = median(times);
  r.ttft_image_ms = median(image_times);
  r.ttft_prefill_ms = median(prefill_times);
}

// Greedy next tokens of every row into the engine's drawn tokens, which the next step takes as
// its inputs: drawn on the device where the backend can (without waiting), else the argmax of
// the logits copied to the host, uploaded there. The read of them is returned.
std::unique_ptr<I32Readback> draw_greedy(Engine& engine, const Tensor& logits) {
  Backend& backend = engine.backend();
  Tensor ids = engine.drawn_tokens().rows_view(0, logits.rows());
  const std::vector<TokenDraw> greedy(static_cast<size_t>(logits.rows()));
  if (!backend.sample_tokens(logits, greedy, ids)) {
    const auto vocab = static_cast<size_t>(logits.cols());
    std::vector<float> host(static_cast<size_t>(logits.numel()));
    backend.to_host_f32(logits, host.data());
    std::vector<int32_t> chosen(static_cast<size_t>(logits.rows()));
    for (size_t r = 0; r < chosen.size(); ++r) {
      const auto row = host.begin() + static_cast<ptrdiff_t>(r * vocab);
      chosen[r] = static_cast<int32_t>(std::max_element(row, row + static_cast<ptrdiff_t>(vocab)) - row);
    }
    backend.upload_i32(chosen.data(), ids);
  }
  return backend.read_i32_async(ids);
}

// Decode steps over the batch, `steps` timed after one that warms up (and captures the graph),
// each step's tokens the greedy draw of the step before (taken from the drawn tokens). Every run
// starts at the context the sequences had when given (the positions past it are written again),
// so that runs are alike and the cache need hold one run's growth.
class DecodeSteps {
 public:
  DecodeSteps(Engine& engine, std::span<SequenceState* const> batch, std::mt19937_64& rng)
      : engine_(engine), batch_(batch), unused_(batch.size(), 0), sources_(batch.size()) {
    for (size_t i = 0; i < sources_.size(); ++i) sources_[i] = static_cast<int32_t>(i);
    for (const SequenceState* s : batch) start_.push_back(s->length);
    // The first step's inputs: random tokens where the draws will go.
    const auto ids = random_ids(rng, static_cast<int>(batch.size()), engine.config().decoder.vocab);
    Tensor first = engine.drawn_tokens().rows_view(0, static_cast<int64_t>(batch.size()));
    engine.backend().upload_i32(ids.data(), first);
  }

  // As the scheduler issues them ahead: step n + 1 goes to the backend before the host reads
  // step n's tokens; a step's time is the time between two reads.
  std::vector<double> pipelined(int steps) {
    rewind();
    std::vector<double> times;
    std::unique_ptr<I32Readback> previous;
    Clock::time_point last;
    for (int step = 0; step <= steps; ++step) {
      const Tensor logits = engine_.decode(batch_, unused_, sources_);
      if (previous) {
        previous->wait();
        if (step >= 2) times.push_back(ms_between(last, Clock::now()));
        last = Clock::now();
      }
      previous = draw_greedy(engine_, logits);
    }
    previous->wait();
    times.push_back(ms_between(last, Clock::now()));
    return times;
  }

  // Each step issued once the last one's tokens are read; `after` runs between steps, untimed.
  std::vector<double> serial(int steps, const std::function<void()>& after) {
    rewind();
    std::vector<double> times;
    for (int step = 0; step <= steps; ++step) {
      const auto start = Clock::now();
      draw_greedy(engine_, engine_.decode(batch_, unused_, sources_))->wait();
      if (step == 0) continue;
      times.push_back(ms_since(start));
      if (after) after();
    }
    return times;
  }

 private:
  static double ms_between(Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  }
  void rewind() {
    for (size_t i = 0; i < batch_.size(); ++i) batch_[i]->length = start_[i];
  }

  Engine& engine_;
  std::span<SequenceState* const> batch_;
  std::vector<int32_t> unused_, sources_;
  std::vector<int64_t> start_;
};

DecodeRun bench_decode(Engine& engine, const BenchOptions& o, int batch_size, std::mt19937_64& rng) {
  std::vector<SequenceState> seqs(static_cast<size_t>(batch_size));
  for (auto& s : seqs) prefill_random(engine, s, rng, o.context);
  std::vector<SequenceState*> batch;
  for (auto& s : seqs) batch.push_back(&s);
  DecodeSteps steps(engine, batch, rng);
  // Issued ahead only where the scheduler issues them so (the backend runs ops asynchronously).
  const bool ahead = engine.backend().issues_asynchronously();
  std::vector<double> times = ahead ? steps.pipelined(o.decode_steps) : std::vector<double>{};
  const std::vector<double> serial_times = steps.serial(o.decode_steps, {});
  if (!ahead) times = serial_times;
  std::vector<double> probes, serial_probed;
  if (o.ceiling_each_step)
    serial_probed = steps.serial(o.decode_steps, [&] {
      probes.push_back(engine.backend().measure_bandwidth_gbps(size_t{256} << 20, 3));
    });
  for (auto& s : seqs) engine.release(s);
  const double kv_bytes_per_token = engine.kv_cache().bytes_per_token();
  DecodeRun d;
  d.batch = batch_size;
  d.step_ms = median(times);
  d.serial_ms = median(serial_times);
  // The mean context of a run (decode_steps + 1 positions past `context`).
  d.bytes_per_step = engine.decoder_weight_bytes() +
                     batch_size * (o.context + (o.decode_steps + 1) / 2.0) * kv_bytes_per_token;
  if (!probes.empty()) {
    std::vector<double> shares;
    for (size_t i = 0; i < probes.size(); ++i)
      shares.push_back(d.bytes_per_step / (serial_probed[i] * 1e6) / probes[i]);
    d.paired_share = median(shares);
    d.probe_min_gbps = *std::min_element(probes.begin(), probes.end());
    d.probe_max_gbps = *std::max_element(probes.begin(), probes.end());
  }
  d.gbps = d.bytes_per_step / (d.step_ms * 1e6);
  d.tok_s_per_seq = 1000.0 / d.step_ms;
  d.tok_s_total = d.tok_s_per_seq * batch_size;
  return d;
}

// Marks every run whose cost per token exceeds a smaller batch's, and the floors.
void compare_runs(std::vector<DecodeRun>& runs, double bandwidth_gbps) {
  for (DecodeRun& d : runs) {
    if (bandwidth_gbps > 0) d.floor_ms = d.bytes_per_step / (bandwidth_gbps * 1e6);
    for (const DecodeRun& smaller : runs)
      if (smaller.batch < d.batch && smaller.step_ms / smaller.batch < d.step_ms / d.batch &&
          (d.costlier_than_batch == 0 || smaller.batch < d.costlier_than_batch))
        d.costlier_than_batch = smaller.batch;
  }
}

}  // namespace

BenchResult run_benchmark(Engine& engine, const BenchOptions& o) {
  MOXIN_CHECK(!o.batches.empty(), "[bench] no --batch given");
  for (int batch : o.batches) {
    MOXIN_CHECK(batch >= 1 && batch <= 256, "[bench] --batch must be in 1..256, got ", batch);
    // Each run releases its sequences before the next: the largest batch must fit alone.
    const int64_t needed = int64_t{batch} * ((o.context + o.decode_steps + 2 + 15) / 16 * 16);
    MOXIN_CHECK(needed <= engine.kv_pool().capacity_tokens(), "[bench] batch ", batch, " x context ",
                o.context, " needs ", needed, " KV positions but the cache holds ",
                engine.kv_pool().capacity_tokens(), " (raise --max-context)");
  }
  MOXIN_CHECK(o.context >= 1, "[bench] --context must be >= 1, got ", o.context);
  MOXIN_CHECK(o.decode_steps >= 1 && o.runs >= 1, "[bench] --decode-steps and --runs must be >= 1");
  std::mt19937_64 rng(o.seed);
  BenchResult r;
  r.rss_after_load_mb = status_mb("VmRSS:");
  r.device = engine.backend().name();
  r.kv_cache = engine.kv_cache().element() == DType::F8_E4M3 ? "fp8 e4m3" : std::string(dtype_name(engine.kv_cache().element()));
  r.kv_bytes_per_token = engine.kv_cache().bytes_per_token();
  r.context = o.context;
  if (o.vision) bench_vision(engine, o, rng, r);
  bench_prefill(engine, o, rng, r);
  if (!o.image_path.empty()) bench_first_token(engine, o, rng, r);
  r.weight_bytes = engine.decoder_weight_bytes();
  for (int batch : o.batches) r.decode.push_back(bench_decode(engine, o, batch, rng));
  r.peak_rss_mb = status_mb("VmHWM:");
  r.device_memory_mb = static_cast<double>(engine.backend().device_memory_used()) / (1 << 20);
  r.device_weights_mb = static_cast<double>(engine.device_weight_bytes()) / (1 << 20);
  r.device_kv_cache_mb = static_cast<double>(engine.device_kv_cache_bytes()) / (1 << 20);
  // Last: its 1 GB probe buffer on the CPU would otherwise count in the peak RSS.
  r.bandwidth_gbps = engine.backend().measure_bandwidth_gbps();
  compare_runs(r.decode, r.bandwidth_gbps);
  return r;
}

}  // namespace moxin
