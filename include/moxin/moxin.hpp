// moxin: the public C++ API of the Moxin-7B VLM inference engine.
//
//   auto model = moxin::Model::load("/models/Moxin-7B-VLM-hf", {.device = moxin::Device::CUDA});
//   moxin::Prompt prompt = moxin::Prompt::single("Describe this image.", moxin::read_file("cat.jpg"));
//   moxin::Generation gen = model->generate(prompt, {.max_tokens = 128});
//   while (auto piece = gen.next()) std::cout << piece->text << std::flush;
//
// Every failure throws moxin::Error (moxin/error.hpp) with a message naming the cause.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moxin/error.hpp"

namespace moxin {

class Engine;
class Session;

enum class Device { CPU, CUDA };

struct LoadOptions {
  Device device = Device::CPU;
  int threads = 0;          // CPU worker threads; 0 = one per hardware thread
  int gpu = 0;              // CUDA device ordinal
  int max_context = 4096;   // KV cache capacity in tokens (prompt + image tokens + generated)
  uint64_t max_image_pixels = 89478485;  // larger images are refused (Pillow's bomb limit)
  int quantize_bits = 0;        // 8 or 4: quantize the decoder while loading (docs/model.md section 5)
  int quantize_group_size = 64;  // 64 or 128 inputs per group
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

struct Timings {
  double load_ms = 0;
  double vision_ms = 0;
  double prefill_ms = 0;
  double decode_ms = 0;
  int prompt_tokens = 0;  // including the 256 image tokens
  int generated_tokens = 0;
  double decode_tokens_per_s() const;
};

// A running generation; the first next() runs vision and prefill, later ones decode one token.
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
  explicit Conversation(std::unique_ptr<Session> session);
  std::unique_ptr<Session> session_;
};

struct ModelInfo {
  int vocab_size, hidden_size, layers, image_tokens;
  std::string device;
};

class Model {
 public:
  static std::unique_ptr<Model> load(const std::string& model_dir, const LoadOptions& options = {});
  ~Model();

  Generation generate(const Prompt& prompt, const GenerateOptions& options = {});
  Conversation conversation();
  std::vector<int32_t> tokenize(const std::string& text, bool add_bos = true) const;
  std::string detokenize(const std::vector<int32_t>& ids) const;
  ModelInfo info() const;
  double load_ms() const { return load_ms_; }

 private:
  Model(std::unique_ptr<Engine> engine, LoadOptions options, double load_ms);
  std::unique_ptr<Engine> engine_;
  LoadOptions options_;
  double load_ms_;
};

// Reads a whole file (e.g. an image) into memory; throws moxin::Error if it cannot.
std::vector<uint8_t> read_file(const std::string& path);

}  // namespace moxin
