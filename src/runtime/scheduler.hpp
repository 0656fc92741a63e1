// Continuous batching. One thread owns the Engine (which is not thread-safe); other threads
// submit requests into a bounded queue and read each one's results from its RequestStream.
//
// Every iteration of the scheduler thread:
//   1. drops cancelled requests (their KV blocks go back at once);
//   2. admits queued requests, oldest first, while --max-batch and the KV cache allow, each
//      starting from the longest prompt prefix already in the prefix cache;
//   3. encodes the images of the newly admitted requests that the image cache lacks, all in
//      one batched call of the vision encoders;
//   4. runs ONE Engine::step over every running sequence: the next token of each decoding
//      sequence plus a prefill chunk (at most `prefill_chunk` positions) of each prefilling one,
//      so a long prompt never stalls running streams;
//   5. samples the sequences whose inputs are all in the cache, streams the text out, and
//      releases the finished ones.
// When the KV cache runs short, the newest running sequence is preempted: its blocks are
// freed and it waits at the head of the queue to be prefilled again (prompt + what it has
// generated, which its stream already has), then continues.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "runtime/content_hash.hpp"
#include "runtime/engine.hpp"
#include "runtime/request_stream.hpp"
#include "runtime/sampler.hpp"

namespace moxin {

class KvBlockRefs;
class PrefixCache;
class ImageFeatureCache;

// A decoded and preprocessed image (image.hpp's preprocess_image), named by its file's digest.
struct RequestImage {
  Digest digest;
  std::vector<float> dino, siglip;
};

struct GenerationRequest {
  std::vector<int32_t> prompt_ids;  // tokenize_prompt(): BOS first; the image goes after BOS
  std::optional<RequestImage> image;
  SamplingParams sampling;
  int max_tokens = 256;
  std::vector<std::string> stop;  // non-empty strings
  int top_logprobs = -1;          // < 0: no log-probabilities; else this many alternatives
  bool ignore_eos = false;        // benchmarks: the end-of-sequence token does not end it
};

struct SchedulerOptions {
  int max_batch = 32;          // sequences in one step
  int max_queue = 256;         // requests waiting for a slot; more are refused
  int prefill_chunk = 256;     // prompt positions of one sequence per step
  int prefill_budget = 512;    // prompt positions of all sequences per step (at least one chunk)
  size_t image_cache = 64;     // projected images kept
  bool prefix_cache = true;
};

// Timings for metrics, called on the scheduler thread (keep them cheap).
class SchedulerObserver {
 public:
  virtual ~SchedulerObserver() = default;
  virtual void on_first_token(double seconds_since_submit) = 0;
  virtual void on_next_token(double seconds_since_previous) = 0;
  virtual void on_finished(int prompt_tokens, int completion_tokens) = 0;
};

struct SchedulerStats {
  int queued = 0;
  int running = 0;
  int free_blocks = 0;
  int cached_blocks = 0;
  uint64_t steps = 0;
  uint64_t prefix_hit_blocks = 0;
  uint64_t image_cache_hits = 0;
  uint64_t images_encoded = 0;
  uint64_t preemptions = 0;
};

class Scheduler {
 public:
  Scheduler(Engine& engine, const SchedulerOptions& options, SchedulerObserver* observer = nullptr);
  ~Scheduler();  // stops at once: requests still queued or running end with an error
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // The most positions one sequence may use (prompt with image tokens + generated tokens).
  int max_sequence_positions() const { return max_positions_; }
  int image_tokens() const { return image_tokens_; }

  // Queues a request; nullptr when the queue is full or the scheduler is draining. Throws
  // moxin::Error for a request that could never run (too long, bad parameters).
  std::shared_ptr<RequestStream> submit(GenerationRequest request);
  // Stops taking requests; queued and running ones still finish.
  void drain();
  // After drain(): waits until the last request has finished.
  void wait();
  SchedulerStats stats() const;

 private:
  struct Sequence;
  struct Planned;

  void loop();
  bool wait_for_work();
  void drop_cancelled();
  void admit();
  bool try_admit(std::unique_ptr<Sequence>& s);
  void encode_images(const std::vector<Sequence*>& sequences);
  void run_step();
  std::vector<Planned> plan_step() const;
  void preempt_newest();
  Tensor forward(const std::vector<Planned>& plan);
  Tensor embed_inputs(const Sequence& s, size_t begin, size_t count);
  void offer_prompt_blocks(Sequence& s);
  void sample_next(Sequence& s, std::span<const float> logits);
  void finish(Sequence& s, FinishReason reason, std::string tail, std::optional<GeneratedToken> last);
  void fail(Sequence& s, const std::string& message);
  void retire_done();
  void publish_stats();

  Engine& engine_;
  SchedulerOptions options_;
  SchedulerObserver* observer_;
  int max_positions_;
  int image_tokens_;
  std::unique_ptr<KvBlockRefs> refs_;
  std::unique_ptr<PrefixCache> prefix_;
  std::unique_ptr<ImageFeatureCache> images_;

  // Shared with submitting threads.
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Sequence>> queue_;  // preempted first, then in arrival order
  bool draining_ = false;
  bool stopping_ = false;

  // Scheduler thread only.
  std::vector<std::unique_ptr<Sequence>> running_;  // in admission order
  uint64_t next_order_ = 0;

  std::atomic<int> queued_{0}, running_count_{0}, free_blocks_{0}, cached_blocks_{0};
  std::atomic<uint64_t> steps_{0}, image_hits_{0}, images_encoded_{0}, preemptions_{0},
      prefix_hits_{0};
  std::thread thread_;
};

}  // namespace moxin
