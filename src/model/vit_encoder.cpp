#include "model/vit_encoder.hpp"

#include "core/check.hpp"

namespace moxin {
namespace {

// A [1, N, D] parameter viewed as N rows of D.
Tensor as_rows(Tensor t) { return t.reshaped({t.numel() / t.shape.back(), t.shape.back()}); }

}  // namespace

VitEncoder::VitEncoder(Backend& backend, const VitConfig& config, const VitWeights& weights)
    : backend_(backend), config_(config) {
  patch_ = backend.prepare_linear(weights.patch_linear);
  pos_embed_ = as_rows(backend.param(*weights.pos_embed));
  if (config.num_prefix() > 0) {
    prefix_ = backend.empty_act({config.num_prefix(), config.dim});
    int row = 0;
    if (weights.cls_token) {
      backend.copy_rows(as_rows(backend.param(*weights.cls_token)), prefix_, row);
      row += 1;
    }
    if (weights.reg_token) backend.copy_rows(as_rows(backend.param(*weights.reg_token)), prefix_, row);
  }
  blocks_.reserve(weights.blocks.size());
  for (const VitBlockWeights& w : weights.blocks) {
    Block b;
    b.norm1_w = backend.param(*w.norm1.weight);
    b.norm1_b = backend.param(*w.norm1.bias);
    b.norm2_w = backend.param(*w.norm2.weight);
    b.norm2_b = backend.param(*w.norm2.bias);
    if (config.layerscale) {
      b.ls1 = backend.param(*w.ls1);
      b.ls2 = backend.param(*w.ls2);
    }
    b.qkv = backend.prepare_linear(w.qkv);
    b.proj = backend.prepare_linear(w.proj);
    b.fc1 = backend.prepare_linear(w.fc1);
    b.fc2 = backend.prepare_linear(w.fc2);
    blocks_.push_back(std::move(b));
  }
}

Tensor VitEncoder::embed_patches(const Tensor& images, int batch) const {
  const int patches = config_.num_patches;
  Tensor patch_rows = backend_.empty_act({int64_t{batch} * patches, config_.dim});
  backend_.patch_embed(images, patch_, config_.patch, patch_rows);
  backend_.add_rows_cyclic(patch_rows, pos_embed_);  // prefix tokens get no position embedding
  if (config_.num_prefix() == 0) return patch_rows;

  const int tokens = config_.num_prefix() + patches;
  Tensor x = backend_.empty_act({int64_t{batch} * tokens, config_.dim});
  for (int b = 0; b < batch; ++b) {
    backend_.copy_rows(prefix_, x, int64_t{b} * tokens);
    backend_.copy_rows(patch_rows.rows_view(int64_t{b} * patches, patches), x,
                       int64_t{b} * tokens + config_.num_prefix());
  }
  return x;
}

void VitEncoder::run_block(const Block& block, const Block* next, Tensor& x, Tensor& h, int batch,
                           int tokens) const {
  const int64_t rows = x.rows();
  const int dim = config_.dim;
  // q | k | v in the dtype the attention takes (bf16 where it multiplies bf16 and the projection
  // can write it, which it does only from the input dtype it multiplies).
  const bool qkv_input_native = h.dtype == backend_.linear_input_dtype(block.qkv, rows);
  Tensor qkv = backend_.empty({rows, 3 * int64_t{dim}},
                              qkv_input_native ? backend_.vit_attention_input_dtype(block.qkv, rows) : backend_.act_dtype());
  // In the dtype the projection reads (the attention rounds to bf16 where it takes bf16).
  Tensor attn = backend_.empty({rows, dim}, backend_.linear_input_dtype(block.proj, rows));
  Tensor out = backend_.empty_act({rows, dim});

  backend_.linear(h, block.qkv, qkv);
  backend_.vit_attention(qkv, batch, tokens, config_.heads, config_.head_dim, attn);
  backend_.linear(attn, block.proj, out);
  backend_.add_layer_norm(x, out, config_.layerscale ? &block.ls1 : nullptr, block.norm2_w, block.norm2_b,
                          config_.ln_eps, h);

  Tensor hidden = backend_.empty_act({rows, config_.mlp_dim});
  backend_.linear(h, block.fc1, hidden);
  Tensor act = backend_.input_for(block.fc2, hidden);  // the GELU rounds for fc2 where it takes bf16
  backend_.gelu_erf(hidden, act);
  backend_.linear(act, block.fc2, out);
  if (next != nullptr)
    backend_.add_layer_norm(x, out, config_.layerscale ? &block.ls2 : nullptr, next->norm1_w, next->norm1_b,
                            config_.ln_eps, h);
  else if (config_.layerscale)
    backend_.add_scaled(x, out, block.ls2);
  else
    backend_.add(x, out);
}

Tensor VitEncoder::encode(const Tensor& images, int batch) const {
  MOXIN_CHECK(images.shape.size() == 4 && images.shape[0] == batch &&
                  images.shape[1] == config_.image_size && images.shape[2] == config_.image_size &&
                  images.shape[3] == 3,
              "[vit] expected images [", batch, ", ", config_.image_size, ", ", config_.image_size,
              ", 3], got ", images.shape_str());
  const int tokens = config_.num_prefix() + config_.num_patches;
  Tensor x = embed_patches(images, batch);
  if (!blocks_.empty()) {
    // The norms' outputs in the dtype qkv and fc1 take (bf16 where a GPU GEMM multiplies them).
    const Block& first = blocks_.front();
    const Linear* norm_readers[] = {&first.qkv, &first.fc1};
    Tensor h = backend_.empty({x.rows(), config_.dim}, backend_.shared_input_dtype(norm_readers, x.rows()));
    backend_.layer_norm(x, first.norm1_w, first.norm1_b, config_.ln_eps, h);
    for (size_t i = 0; i < blocks_.size(); ++i)
      run_block(blocks_[i], i + 1 < blocks_.size() ? &blocks_[i + 1] : nullptr, x, h, batch, tokens);
  }
  if (config_.num_prefix() == 0) return x;

  Tensor features = backend_.empty_act({int64_t{batch} * config_.num_patches, config_.dim});
  for (int b = 0; b < batch; ++b)
    backend_.copy_rows(x.rows_view(int64_t{b} * tokens + config_.num_prefix(), config_.num_patches),
                       features, int64_t{b} * config_.num_patches);
  return features;
}

}  // namespace moxin
