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
    l.qkv = backend.prepare_fused_linear({&w.q, &w.k, &w.v});
    l.o = backend.prepare_linear(w.o);
    l.gate_up = backend.prepare_fused_linear({&w.gate, &w.up});
    l.down = backend.prepare_linear(w.down);
    layers_.push_back(std::move(l));
  }
  final_norm_ = backend.param(*weights.final_norm.weight);
  lm_head_ = backend.prepare_linear(weights.lm_head);
}

Tensor Decoder::embed(const Tensor& ids, const DrawnTokens& from) const {
  Tensor x = backend_.empty_act({ids.numel(), config_.hidden});
  backend_.embedding(ids, embed_, x, from);
  return x;
}

// Per layer: qkv, rope + KV write + attention (one op, which the backend may run as one kernel),
// o + add + norm, gate|up + swiglu, down + add + the next layer's norm (each linear and the
// residual step after it one op, which a backend may run as two): seven ops (a decode step's
// cost is mostly their boundaries on the GPU; the CUDA backend fuses the swiglu into the gate|up
// GEMV at one row). Where the backend fuses the residual steps (s.fused), each norm goes into the
// linear after it and each add into the linear before it: five ops, the same bits.
void Decoder::run_layer(int index, Tensor& x, const Tensor& positions, const AttentionBatch& batch,
                        KvCache& cache, Scratch& s) const {
  const Layer& layer = layers_[static_cast<size_t>(index)];
  const float eps = config_.rms_eps;
  if (s.fused) {
    backend_.rms_norm_linear(x, layer.input_norm, eps, layer.qkv, s.normed, s.qkv);
    backend_.rope_paged_attention(s.qkv, positions, config_.rope_theta, cache, index, batch, config_.heads, s.q,
                                  s.attn);
  } else {
    backend_.linear_rope_paged_attention(s.normed, layer.qkv, s.qkv, positions, config_.rope_theta, cache, index, batch,
                                         config_.heads, s.q, s.attn);
  }
  if (s.fused) {
    backend_.linear_add(s.attn, layer.o, s.out, x);
    backend_.rms_norm_linear_swiglu(x, layer.post_attention_norm, eps, layer.gate_up, s.normed, s.gate_up, s.act);
    backend_.linear_add(s.act, layer.down, s.out, x);
    return;
  }
  backend_.linear_add_rms_norm(s.attn, layer.o, s.out, x, layer.post_attention_norm, eps, s.normed);
  backend_.linear_swiglu(s.normed, layer.gate_up, s.gate_up, s.act);
  if (static_cast<size_t>(index) + 1 < layers_.size())
    backend_.linear_add_rms_norm(s.act, layer.down, s.out, x, layers_[static_cast<size_t>(index) + 1].input_norm, eps,
                                 s.normed);
  else
    backend_.linear_add(s.act, layer.down, s.out, x);
}

bool Decoder::fuses_residual_steps(int64_t rows) const {
  for (const Layer& layer : layers_)
    if (!backend_.fuses_rms_norm_into(layer.qkv, rows) || !backend_.fuses_rms_norm_into(layer.gate_up, rows) ||
        !backend_.fuses_add_into(layer.o, rows) || !backend_.fuses_add_into(layer.down, rows))
      return false;
  return true;
}

DType Decoder::input_dtype(int64_t rows, std::initializer_list<const Linear Layer::*> consumers) const {
  std::vector<const Linear*> linears;
  for (const Layer& layer : layers_)
    for (const Linear Layer::*consumer : consumers) linears.push_back(&(layer.*consumer));
  return backend_.shared_input_dtype(linears, rows);
}

void Decoder::forward(Tensor& x, const Tensor& positions, const AttentionBatch& batch,
                      KvCache& cache, const LayerObserver& after_layer) const {
  MOXIN_CHECK(x.cols() == config_.hidden && positions.numel() == x.rows(),
              "[decoder] input ", x.shape_str(), " with ", positions.numel(),
              " positions does not match hidden size ", config_.hidden);
  const int64_t t = x.rows();
  const int64_t q_dim = int64_t{config_.heads} * config_.head_dim;
  const int64_t kv_dim = int64_t{config_.kv_heads} * config_.head_dim;
  Scratch s;
  s.normed = backend_.empty({t, config_.hidden}, input_dtype(t, {&Layer::qkv, &Layer::gate_up}));
  s.qkv = backend_.empty_act({t, q_dim + 2 * kv_dim});
  s.q = backend_.empty_act({t, q_dim});
  s.attn = backend_.empty(
      {t, q_dim}, backend_.attention_output_dtype(batch, t, config_.heads, config_.kv_heads, layers_.front().o));
  s.out = backend_.empty_act({t, config_.hidden});
  s.gate_up = backend_.empty_act({t, 2 * int64_t{config_.intermediate}});
  s.act = backend_.empty({t, config_.intermediate}, input_dtype(t, {&Layer::down}));
  s.fused = fuses_residual_steps(t);
  if (!s.fused) backend_.rms_norm(x, layers_.front().input_norm, config_.rms_eps, s.normed);
  for (size_t i = 0; i < layers_.size(); ++i) {
    run_layer(static_cast<int>(i), x, positions, batch, cache, s);
    if (after_layer) after_layer(static_cast<int>(i), x);
  }
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
