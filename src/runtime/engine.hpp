// The engine: a loaded checkpoint on a backend with its tokenizer and paged KV cache, and the
// one decoder step that every caller (CLI, library API, server scheduler) goes through: any
// mix of sequences, each contributing a chunk of new tokens (a prefill chunk or one decode
// token), in a single forward.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.hpp"
#include "moxin/progress.hpp"
#include "model/vlm.hpp"
#include "quant/quantized_weights.hpp"
#include "text/tokenizer.hpp"
#include "runtime/decode_graphs.hpp"
#include "runtime/kv_block_pool.hpp"
#include "runtime/vision_graphs.hpp"

namespace moxin {

struct EngineOptions {
  BackendOptions backend;
  int max_context = 4096;  // KV cache capacity in tokens, shared by all live sequences
  int block_size = 16;
  int quantize_bits = 0;  // 8 or 4: the decoder linears are quantized after mapping
  int quantize_group_size = 64;
  bool quantize_fp8 = false;  // FP8 E4M3 per-channel instead (quantize_bits must be 0)
  bool kv_cache_fp8 = false;  // the KV cache in FP8 E4M3 (KvCacheDType::Fp8E4M3) instead of act_dtype
  ProgressCallback progress;  // download / upload / quantize progress (include/moxin/progress.hpp)
};

// A sequence's place in the KV cache.
struct SequenceState {
  std::vector<int32_t> block_table;
  int64_t length = 0;  // positions already written to the cache
};

// New tokens of one sequence for a step: their input embeddings [n, hidden].
struct SequenceChunk {
  SequenceState* sequence = nullptr;
  Tensor embeddings;
};

class Engine {
 public:
  // model: a checkpoint directory or a Hugging Face id (hub/resolve_model.hpp).
  static std::unique_ptr<Engine> load(const std::string& model, const EngineOptions& options);
  ~Engine();

  const Tokenizer& tokenizer() const { return tokenizer_; }
  const Vlm& model() const { return *model_; }
  Backend& backend() const { return *backend_; }
  const KvCache& kv_cache() const { return *kv_cache_; }
  const ModelConfig& config() const { return checkpoint_.config; }
  // Bytes of the decoder matrices and norms as loaded (quantized or not): a decode step reads them.
  double decoder_weight_bytes() const { return decoder_weight_bytes_; }
  // Device memory (Backend::device_memory_used) the model's weights and the KV cache took when
  // they were created: what the rest of the device memory is measured against (0 on the CPU).
  size_t device_weight_bytes() const { return device_weight_bytes_; }
  size_t device_kv_cache_bytes() const { return device_kv_cache_bytes_; }
  KvBlockPool& kv_pool() { return pool_; }

  // dino/siglip: B images of 224x224x3 f32 (NHWC), normalized per encoder. Through a captured
  // graph where the backend has them: the features are then valid until the next call.
  ImageFeatures encode_images(std::span<const float> dino, std::span<const float> siglip, int batch);
  // ids -> embeddings [n, hidden]; where `sources` is given, row i with sources[i] >= 0 takes
  // the token drawn_tokens()[sources[i]] instead of ids[i].
  Tensor embed(std::span<const int32_t> ids, std::span<const int32_t> sources = {});
  // Runs the decoder over all chunks (positions continue each sequence's length), writes their
  // K/V, advances the sequences, and returns the logits [chunks, vocab] of each chunk's last token.
  Tensor step(std::span<SequenceChunk> chunks);
  // One new token for each sequence (a decode step): through a captured graph where the backend
  // has them, else through step(). Returns logits [B, vocab], valid until the next call. Where
  // `sources` is given, a sequence with sources[i] >= 0 takes the token drawn_tokens()[sources[i]]
  // instead of tokens[i]: the previous step's draw, which the host need not have read yet.
  Tensor decode(std::span<SequenceState* const> sequences, std::span<const int32_t> tokens,
                std::span<const int32_t> sources = {});
  // Where a step's tokens are drawn on the backend (Backend::sample_tokens, one per logits
  // row) for the next step to take as inputs: I32 [kMaxDrawnRows, 1] (a row per logits row).
  static constexpr int kMaxDrawnRows = 4096;  // the most sequences a step may hold (--max-batch)
  Tensor& drawn_tokens() { return drawn_; }
  // Frees the sequence's KV blocks.
  void release(SequenceState& sequence) { pool_.release(sequence.block_table); sequence.length = 0; }

 private:
  Engine(const std::string& model_dir, const EngineOptions& options);
  void quantize_decoder(const EngineOptions& options);

  Checkpoint checkpoint_;
  // --quantize: what checkpoint_.decoder points at (CPU only: a device backend keeps its own copy).
  std::unique_ptr<QuantizedWeights> quantized_;
  double decoder_weight_bytes_ = 0;
  size_t device_weight_bytes_ = 0;
  size_t device_kv_cache_bytes_ = 0;
  Tokenizer tokenizer_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Vlm> model_;
  std::unique_ptr<KvCache> kv_cache_;
  KvBlockPool pool_;
  Tensor drawn_;
  std::unique_ptr<DecodeGraphs> graphs_;
  std::unique_ptr<VisionGraphs> vision_graphs_;
};

}  // namespace moxin
