// moxin: the public C++ API of the Moxin-7B VLM inference engine.
//
//   auto model = moxin::Model::load("/models/Moxin-7B-VLM-hf", {.device = moxin::Device::CUDA});
//   moxin::Prompt prompt = moxin::Prompt::single("Describe this image.", moxin::read_file("cat.jpg"));
//   moxin::Generation gen = model->generate(prompt, {.max_tokens = 128});
//   while (auto piece = gen.next()) std::cout << piece->text << std::flush;
//
// Several generations at once, from any threads, batched together (continuous batching):
//
//   std::vector<moxin::Generation> gens;
//   for (const auto& q : questions) gens.push_back(model->submit(moxin::Prompt::single(q), {.max_tokens = 64}));
//   for (auto& g : gens) while (g.next()) {}   // or each on its own thread
//
// Every failure throws moxin::Error (moxin/error.hpp) with a message naming the cause.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "moxin/error.hpp"
#include "moxin/preprocess.hpp"  // moxin::preprocess: an image's vision inputs, as the engine computes them
#include "moxin/progress.hpp"

namespace moxin {

class Engine;
class Scheduler;
class Session;

enum class Device { CPU, CUDA };

struct LoadOptions {
  Device device = Device::CPU;
  int threads = 0;          // CPU worker threads; 0 = one per hardware thread
  int gpu = 0;              // CUDA device ordinal
  int max_context = 4096;   // KV cache capacity in tokens (prompt + image tokens + generated)
  uint64_t max_image_pixels = 89478485;  // larger images are refused (Pillow's bomb limit)
  int quantize_bits = 0;        // 8 or 4: quantize the decoder while loading (docs/model.md section 5)
  int quantize_group_size = 64;  // 32, 64 or 128 inputs per group
  bool quantize_fp8 = false;     // FP8 E4M3 with per-output-channel scales instead (quantize_bits 0)
  bool kv_cache_fp8 = false;     // keys and values cached as FP8 E4M3 (a power-of-two scale per row): half
                                 // of a bf16 cache's memory; CPU only for now
  ProgressCallback progress;     // download / load / upload / quantize progress; empty = silent
};

struct Turn {
  std::string user;
  std::string assistant;  // empty for the last turn, the one to answer
};

struct Prompt {
  std::vector<Turn> turns;
  std::vector<uint8_t> image;  // encoded image file (JPEG, PNG, WebP, GIF, BMP); empty = text only
  static Prompt single(std::string question, std::vector<uint8_t> image = {});
};

struct GenerateOptions {
  int max_tokens = 256;
  float temperature = 0.0f;  // 0 = greedy
  int top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  uint64_t seed = 0;
  std::vector<std::string> stop;  // generation ends before any of these strings
};

enum class FinishReason { None, Eos, Stop, Length };

struct Piece {
  int32_t token = 0;
  std::string text;  // the newly completed text (may be empty while UTF-8 or a stop string is pending)
};

// For Model::submit()'s generations, which share steps with others: vision_ms is 0,
// prefill_ms the time from submit() to the first token (waiting and vision included), and
// decode_ms the time from the first token to the last.
struct Timings {
  double load_ms = 0;
  double vision_ms = 0;
  double prefill_ms = 0;
  double decode_ms = 0;
  int prompt_tokens = 0;  // including the 256 image tokens
  int generated_tokens = 0;
  double decode_tokens_per_s() const;
};

// A running generation. From generate(): the first next() runs vision and prefill on the
// caller's thread, later ones decode one token. From submit(): the model's scheduler computes
// it; next() waits for its next token. Dropping an unfinished one cancels it.
class Generation {
 public:
  Generation(Generation&&) noexcept;
  Generation& operator=(Generation&&) noexcept;
  ~Generation();
  std::optional<Piece> next();  // nullopt once finished
  FinishReason finish_reason() const;
  const std::vector<int32_t>& tokens() const;  // generated ids so far
  std::string text() const;                    // generated text so far (stop strings cut)
  const Timings& timings() const;

 private:
  friend class Model;
  struct State;
  struct Direct;
  struct Scheduled;
  explicit Generation(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// A conversation position in the KV cache: the seed's low-level calls.
class Conversation {
 public:
  Conversation(Conversation&&) noexcept;
  Conversation& operator=(Conversation&&) noexcept;
  ~Conversation();
  // Full VLM forward of the prompt (vision, projector, prefill): logits of the last position.
  std::vector<float> prefill(const Prompt& prompt);
  // One-token decode with the cache: logits for the next position.
  std::vector<float> decode(int32_t token);
  int64_t position() const;

 private:
  friend class Model;
  Conversation(std::unique_ptr<Session> session, std::shared_ptr<void> lease);
  std::shared_ptr<void> lease_;  // the model's engine; let go after session_ has freed its KV blocks
  std::unique_ptr<Session> session_;
};

struct ModelInfo {
  int vocab_size, hidden_size, layers, image_tokens;
  std::string device;
};

class Model {
 public:
  // model: a checkpoint directory, or a Hugging Face id "org/name[@revision]" resolved in the
  // Hugging Face cache (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub) and downloaded
  // into it when missing (HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE honored). An existing path wins.
  static std::unique_ptr<Model> load(const std::string& model, const LoadOptions& options = {});
  ~Model();

  // One generation computed on the caller's thread, with the timings of each stage (vision,
  // prefill, decode). Once submit() has been used, this goes through the scheduler too.
  Generation generate(const Prompt& prompt, const GenerateOptions& options = {});
  // Thread-safe: queues a generation on the model's scheduler, which runs all submitted
  // generations together, continuously batched, each with the output it would have alone.
  // The first call starts the scheduler; it is refused while a Generation from generate() or
  // a Conversation is alive (they use the engine on their own threads). From then on
  // generate() goes through the scheduler too, and conversation() is refused.
  Generation submit(const Prompt& prompt, const GenerateOptions& options = {});
  // Low-level calls on the caller's thread (refused once submit() has been used).
  Conversation conversation();
  std::vector<int32_t> tokenize(const std::string& text, bool add_bos = true) const;
  std::string detokenize(const std::vector<int32_t>& ids) const;
  ModelInfo info() const;
  double load_ms() const { return load_ms_; }

 private:
  Model(std::unique_ptr<Engine> engine, LoadOptions options, double load_ms);
  // The engine is used by one thread at a time: by generate()'s Generations and Conversations
  // on their callers' threads (each holds a lease while alive), or by the scheduler's thread
  // once submit() has started it. A lease, or empty once the scheduler runs.
  std::shared_ptr<void> try_lease_engine();
  // The scheduler, started on first use; throws moxin::Error while a lease is held.
  Scheduler& scheduler();

  std::unique_ptr<Engine> engine_;
  LoadOptions options_;
  double load_ms_;
  std::mutex use_mutex_;
  int leases_ = 0;
  std::unique_ptr<Scheduler> scheduler_;
};

// Reads a whole file (e.g. an image) into memory; throws moxin::Error if it cannot.
std::vector<uint8_t> read_file(const std::string& path);

}  // namespace moxin
