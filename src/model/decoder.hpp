// The Mistral-style decoder (docs/model.md section 4): embeddings in, hidden states or logits out,
// over a paged KV cache. One forward handles any mix of sequences and tokens (prefill chunks
// and decode steps) as described by an AttentionBatch, so batching needs no second path.
#pragma once

#include <functional>
#include <initializer_list>
#include <vector>

#include "backend/backend.hpp"

namespace moxin {

class Decoder {
 public:
  Decoder(Backend& backend, const DecoderConfig& config, const DecoderWeights& weights);
  const DecoderConfig& config() const { return config_; }

  // ids [T] (I32) -> embeddings [T, hidden]; rows named in `from` take a token a sampler drew
  // on the device instead (Backend::embedding).
  Tensor embed(const Tensor& ids, const DrawnTokens& from = {}) const;
  // Called after each layer with its index and x (the residual stream after that layer).
  using LayerObserver = std::function<void(int layer, const Tensor& x)>;
  // Runs all layers over x [T, hidden] in place, writing K/V of the tokens into the cache.
  // `after_layer` (for dumps; never inside a graph capture) sees every layer's output.
  void forward(Tensor& x, const Tensor& positions, const AttentionBatch& batch, KvCache& cache,
               const LayerObserver& after_layer = {}) const;
  // Final norm + lm_head over the rows of x picked by `rows` (I32 [R]) -> logits [R, vocab].
  Tensor logits(const Tensor& x, const Tensor& rows) const;

 private:
  struct Layer {
    Tensor input_norm, post_attention_norm;
    Linear qkv, o, gate_up, down;  // q | k | v and gate | up fused: one op each
  };
  // The dtype the `consumers` linears of every layer take at this many rows (the backend's
  // shared_input_dtype over all of them): the ops writing their input use it.
  DType input_dtype(int64_t rows, std::initializer_list<const Linear Layer::*> consumers) const;
  // The activations of one forward, shared by its layers (normed and act in input_dtype).
  struct Scratch {
    Tensor normed, qkv, q, attn, out, gate_up, act;
    bool fused = false;  // the backend fuses the residual steps (fuses_residual_steps)
  };
  // Whether the backend runs every layer's norms inside the linears after them and the residual
  // adds inside the linears before them, at this many rows.
  bool fuses_residual_steps(int64_t rows) const;
  // Unfused: expects scratch.normed = input_norm(x); leaves there the next layer's input_norm(x),
  // or nothing for the last layer (the final norm runs on the gathered rows in logits()).
  void run_layer(int index, Tensor& x, const Tensor& positions, const AttentionBatch& batch,
                 KvCache& cache, Scratch& scratch) const;

  Backend& backend_;
  DecoderConfig config_;
  Linear embed_;
  std::vector<Layer> layers_;
  Tensor final_norm_;
  Linear lm_head_;
};

}  // namespace moxin
