#include "model/decoder.hpp"

#include "core/check.hpp"

namespace moxin {

Decoder::Decoder(Backend& backend, const DecoderConfig& config, const DecoderWeights& weights)
    : backend_(backend), config_(config) {
  LinearWeight table;
  table.weight = weights.embed;
  table.out_features = weights.embed->shape[0];
  table.in_features = weights.embed->shape[1];
  embed_ = backend.prepare_linear(table);
  layers_.reserve(weights.layers.size());
  for (const DecoderLayerWeights& w : weights.layers) {
    Layer l;
    l.input_norm = backend.param(*w.input_norm.weight);
    l.post_attention_norm = backend.param(*w.post_attention_norm.weight);
    l.q = backend.prepare_linear(w.q);
    l.k = backend.prepare_linear(w.k);
    l.v = backend.prepare_linear(w.v);
    l.o = backend.prepare_linear(w.o);
    l.gate = backend.prepare_linear(w.gate);
    l.up = backend.prepare_linear(w.up);
    l.down = backend.prepare_linear(w.down);
    layers_.push_back(std::move(l));
  }
  final_norm_ = backend.param(*weights.final_norm.weight);
  lm_head_ = backend.prepare_linear(weights.lm_head);
}

Tensor Decoder::embed(const Tensor& ids) const {
  Tensor x = backend_.empty_act({ids.numel(), config_.hidden});
  backend_.embedding(ids, embed_, x);
  return x;
}

void Decoder::run_layer(int index, const Layer& layer, Tensor& x, const Tensor& positions,
                        const AttentionBatch& batch, KvCache& cache) const {
  const int64_t t = x.rows();
  const int64_t q_dim = int64_t{config_.heads} * config_.head_dim;
  const int64_t kv_dim = int64_t{config_.kv_heads} * config_.head_dim;
  Tensor h = backend_.empty_act({t, config_.hidden});
  Tensor q = backend_.empty_act({t, q_dim});
  Tensor k = backend_.empty_act({t, kv_dim});
  Tensor v = backend_.empty_act({t, kv_dim});
  Tensor attn = backend_.empty_act({t, q_dim});
  Tensor out = backend_.empty_act({t, config_.hidden});

  backend_.rms_norm(x, layer.input_norm, config_.rms_eps, h);
  backend_.linear(h, layer.q, q);
  backend_.linear(h, layer.k, k);
  backend_.linear(h, layer.v, v);
  backend_.rope(q, k, positions, config_.head_dim, config_.rope_theta);
  backend_.kv_write(cache, index, k, v, batch);
  backend_.paged_attention(q, cache, index, batch, config_.heads, attn);
  backend_.linear(attn, layer.o, out);
  backend_.add(x, out);

  Tensor gate = backend_.empty_act({t, config_.intermediate});
  Tensor up = backend_.empty_act({t, config_.intermediate});
  backend_.rms_norm(x, layer.post_attention_norm, config_.rms_eps, h);
  backend_.linear(h, layer.gate, gate);
  backend_.linear(h, layer.up, up);
  backend_.swiglu(gate, up, gate);
  backend_.linear(gate, layer.down, out);
  backend_.add(x, out);
}

void Decoder::forward(Tensor& x, const Tensor& positions, const AttentionBatch& batch,
                      KvCache& cache) const {
  MOXIN_CHECK(x.cols() == config_.hidden && positions.numel() == x.rows(),
              "[decoder] input ", x.shape_str(), " with ", positions.numel(),
              " positions does not match hidden size ", config_.hidden);
  for (size_t i = 0; i < layers_.size(); ++i)
    run_layer(static_cast<int>(i), layers_[i], x, positions, batch, cache);
}

Tensor Decoder::logits(const Tensor& x, const Tensor& rows) const {
  const int64_t r = rows.numel();
  Tensor picked = backend_.empty_act({r, config_.hidden});
  backend_.gather_rows(x, rows, picked);
  Tensor normed = backend_.empty_act({r, config_.hidden});
  backend_.rms_norm(picked, final_norm_, config_.rms_eps, normed);
  Tensor out = backend_.empty_act({r, lm_head_.out_features});
  backend_.linear(normed, lm_head_, out);
  return out;
}

}  // namespace moxin
