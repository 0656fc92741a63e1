// Maps the Mistral-style decoder and the fused projector, cross-checked against config.json.
#include "core/check.hpp"
#include "io/checkpoint_mapping.hpp"

namespace moxin {
namespace {

// The defaults docs/model.md section 1 gives for what the tensors cannot tell.
constexpr int64_t kDefaultHeads = 32;

// Splits the rows of a projection into heads of head_dim.
int64_t heads_of(TensorBinder& b, int64_t rows, int64_t head_dim, const std::string& name) {
  MOXIN_CHECK(rows % head_dim == 0, "[checkpoint] ", b.dir(), ": '", name, "' has ", rows,
              " rows, not a multiple of head_dim ", head_dim);
  return rows / head_dim;
}

DecoderLayerWeights map_layer(TensorBinder& b, const std::string& p, const DecoderConfig& c,
                              const QuantizationConfig* quant) {
  const int64_t q_rows = int64_t{c.heads} * c.head_dim;
  const int64_t kv_rows = int64_t{c.kv_heads} * c.head_dim;
  DecoderLayerWeights w;
  w.input_norm = b.norm(p + "input_layernorm", c.hidden, false);
  w.post_attention_norm = b.norm(p + "post_attention_layernorm", c.hidden, false);
  w.q = b.decoder_linear(p + "self_attn.q_proj", q_rows, c.hidden, quant);
  w.k = b.decoder_linear(p + "self_attn.k_proj", kv_rows, c.hidden, quant);
  w.v = b.decoder_linear(p + "self_attn.v_proj", kv_rows, c.hidden, quant);
  w.o = b.decoder_linear(p + "self_attn.o_proj", c.hidden, q_rows, quant);
  w.gate = b.decoder_linear(p + "mlp.gate_proj", c.intermediate, c.hidden, quant);
  w.up = b.decoder_linear(p + "mlp.up_proj", c.intermediate, c.hidden, quant);
  w.down = b.decoder_linear(p + "mlp.down_proj", c.hidden, c.intermediate, quant);
  return w;
}

}  // namespace

void cross_check(const ConfigJson& json, const std::optional<int64_t>& stated, int64_t derived,
                 const std::string& key, const std::string& evidence) {
  MOXIN_CHECK(!stated || *stated == derived, "[checkpoint] ", json.path, " says ", key, " = ",
              stated.value_or(0), ", but the tensors say ", derived, " (", evidence, ")");
}

DecoderWeights map_decoder(TensorBinder& b, const ConfigJson& json, const QuantizationConfig* quant,
                           DecoderConfig& c, std::string& prefix) {
  const std::string embed_name = b.pick_spelling(
      {"language_model.model.embed_tokens.weight", "llm_backbone.llm.model.embed_tokens.weight"});
  prefix = embed_name.substr(0, embed_name.find("model.embed_tokens"));
  DecoderWeights w;
  w.embed = &b.ranked(embed_name, 2, "[vocab, hidden]");
  const int64_t vocab = w.embed->shape[0];
  const int64_t hidden = w.embed->shape[1];
  const std::string embed_evidence = cat("'", embed_name, "' is ", w.embed->shape_str());
  cross_check(json, json.hidden, hidden, json.decoder_key_prefix + "hidden_size", embed_evidence);
  cross_check(json, json.vocab, vocab, json.decoder_key_prefix + "vocab_size", embed_evidence);

  const std::string layers_prefix = prefix + "model.layers.";
  const int layers = b.count_indexed(layers_prefix);
  MOXIN_CHECK(layers > 0, "[checkpoint] missing tensor '", layers_prefix,
              "0.self_attn.q_proj.weight' in ", b.dir(), " (the decoder has no layers)");
  cross_check(json, json.layers, layers, json.decoder_key_prefix + "num_hidden_layers",
              cat("'", layers_prefix, "N.*' exist for N = 0..", layers - 1));

  // Head counts are not in the tensors: head_dim comes from config.json (or hidden / heads),
  // then the projections' rows give the query and key/value head counts.
  const int64_t stated_heads = json.heads.value_or(kDefaultHeads);
  MOXIN_CHECK(json.head_dim || hidden % stated_heads == 0, "[checkpoint] ", json.path,
              ": hidden size ", hidden, " is not divisible into ", stated_heads, " heads; set ",
              json.decoder_key_prefix, "num_attention_heads or head_dim");
  const int64_t head_dim = json.head_dim.value_or(hidden / stated_heads);
  const std::string first = layers_prefix + "0.";
  const std::string q_name = first + "self_attn.q_proj";
  const std::string k_name = first + "self_attn.k_proj";
  const int64_t q_rows = b.out_features(q_name);
  const int64_t kv_rows = b.out_features(k_name);
  const int64_t heads = heads_of(b, q_rows, head_dim, q_name);
  const int64_t kv_heads = heads_of(b, kv_rows, head_dim, k_name);
  cross_check(json, json.heads, heads, json.decoder_key_prefix + "num_attention_heads",
              cat("'", q_name, ".weight' has ", q_rows, " rows = heads x head_dim ", head_dim));
  cross_check(json, json.kv_heads, kv_heads, json.decoder_key_prefix + "num_key_value_heads",
              cat("'", k_name, ".weight' has ", kv_rows, " rows = kv heads x head_dim ", head_dim));
  MOXIN_CHECK(kv_heads > 0 && heads % kv_heads == 0, "[checkpoint] ", b.dir(), ": ", heads,
              " query heads cannot be grouped over ", kv_heads, " key/value heads");
  MOXIN_CHECK(head_dim % 2 == 0, "[checkpoint] ", json.path, ": head_dim ", head_dim,
              " is odd; rotate-half RoPE needs an even head_dim");
  const std::string gate_name = first + "mlp.gate_proj";
  const int64_t intermediate = b.out_features(gate_name);
  cross_check(json, json.intermediate, intermediate, json.decoder_key_prefix + "intermediate_size",
              cat("'", gate_name, ".weight' has ", intermediate, " rows"));

  c.hidden = static_cast<int>(hidden);
  c.layers = layers;
  c.heads = static_cast<int>(heads);
  c.kv_heads = static_cast<int>(kv_heads);
  c.head_dim = static_cast<int>(head_dim);
  c.intermediate = static_cast<int>(intermediate);
  c.vocab = static_cast<int>(vocab);
  if (json.rms_eps) c.rms_eps = static_cast<float>(*json.rms_eps);
  if (json.rope_theta) c.rope_theta = static_cast<float>(*json.rope_theta);
  if (json.max_position) c.max_position = static_cast<int>(*json.max_position);
  if (json.bos_id) c.bos_id = static_cast<int>(*json.bos_id);
  if (json.eos_id) c.eos_id = static_cast<int>(*json.eos_id);
  MOXIN_CHECK(c.bos_id < vocab && c.eos_id < vocab, "[checkpoint] ", json.path, ": bos_token_id ",
              c.bos_id, " / eos_token_id ", c.eos_id, " must be below the vocabulary size ", vocab);

  for (int i = 0; i < layers; ++i)
    w.layers.push_back(map_layer(b, cat(layers_prefix, i, "."), c, quant));
  w.final_norm = b.norm(prefix + "model.norm", hidden, false);
  w.lm_head = b.decoder_linear(prefix + "lm_head", vocab, hidden, quant);
  return w;
}

ProjectorWeights map_projector(TensorBinder& b, int64_t in, int64_t out, int64_t& hidden) {
  // Prismatic's nn.Sequential names the linears 0, 2, 4; the HF conversion fc1..fc3.
  const bool sequential =
      b.pick_spelling({"projector.fc1.weight", "projector.0.weight"}) == "projector.0.weight";
  const auto name = [&](int i) {
    return sequential ? cat("projector.", 2 * (i - 1)) : cat("projector.fc", i);
  };
  hidden = b.ranked(name(1) + ".weight", 2, cat("[hidden, ", in, "]")).shape[0];
  ProjectorWeights w;
  w.fc1 = b.dense_linear(name(1), hidden, in, true);
  w.fc2 = b.dense_linear(name(2), out, hidden, true);
  w.fc3 = b.dense_linear(name(3), out, out, true);
  return w;
}

}  // namespace moxin
