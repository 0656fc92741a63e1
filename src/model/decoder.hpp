// The Mistral-style decoder (SPEC.md section 4): embeddings in, hidden states or logits out,
// over a paged KV cache. One forward handles any mix of sequences and tokens (prefill chunks
// and decode steps) as described by an AttentionBatch, so batching needs no second path.
#pragma once

#include <vector>

#include "backend/backend.hpp"

namespace moxin {

class Decoder {
 public:
  Decoder(Backend& backend, const DecoderConfig& config, const DecoderWeights& weights);
  const DecoderConfig& config() const { return config_; }

  // ids [T] (I32) -> embeddings [T, hidden]
  Tensor embed(const Tensor& ids) const;
  // Runs all layers over x [T, hidden] in place, writing K/V of the tokens into the cache.
  void forward(Tensor& x, const Tensor& positions, const AttentionBatch& batch, KvCache& cache) const;
  // Final norm + lm_head over the rows of x picked by `rows` (I32 [R]) -> logits [R, vocab].
  Tensor logits(const Tensor& x, const Tensor& rows) const;

 private:
  struct Layer {
    Tensor input_norm, post_attention_norm;
    Linear q, k, v, o, gate, up, down;
  };
  void run_layer(int index, const Layer& layer, Tensor& x, const Tensor& positions,
                 const AttentionBatch& batch, KvCache& cache) const;

  Backend& backend_;
  DecoderConfig config_;
  Linear embed_;
  std::vector<Layer> layers_;
  Tensor final_norm_;
  Linear lm_head_;
};

}  // namespace moxin
