#include "cli/cmd_dump_hidden.hpp"

#include <numeric>

#include "io/safetensors_writer.hpp"
#include "model/decoder.hpp"
#include "runtime/engine.hpp"

namespace moxin::cli {
namespace {

constexpr int kBlockSize = 16;

// The weights of a decoder made of layers [first, first + count) of `all`.
DecoderWeights layer_slice(const DecoderWeights& all, size_t first, size_t count) {
  DecoderWeights w = all;
  w.layers.assign(all.layers.begin() + static_cast<ptrdiff_t>(first),
                  all.layers.begin() + static_cast<ptrdiff_t>(first + count));
  return w;
}

}  // namespace

// The engine runs all layers in one call and exposes none in between, so this drives the
// engine's weights itself: one single-layer Decoder per layer (on the CPU a Linear is a view
// of the weights, so building one costs nothing) over one single-layer KV cache that each
// layer's prefill overwrites. The last position's logits equal the engine's (the parity test
// checks it), which ties this path to the one every other command uses.
void add_hidden_states(SafetensorsWriter& w, Engine& engine, const std::vector<int32_t>& input_ids) {
  Backend& backend = engine.backend();
  const DecoderWeights& weights = engine.checkpoint().decoder;
  DecoderConfig config = engine.config().decoder;
  const int64_t tokens = static_cast<int64_t>(input_ids.size());
  const int64_t hidden = config.hidden;
  const int blocks = static_cast<int>((tokens + kBlockSize - 1) / kBlockSize);

  std::vector<int32_t> sequence(static_cast<size_t>(tokens), 0), positions(static_cast<size_t>(tokens));
  std::vector<int32_t> table(static_cast<size_t>(blocks));
  std::iota(positions.begin(), positions.end(), 0);
  std::iota(table.begin(), table.end(), 0);
  AttentionBatch batch;
  batch.token_seq = backend.from_host_i32(sequence.data(), {tokens});
  batch.token_pos = backend.from_host_i32(positions.data(), {tokens});
  batch.block_tables = backend.from_host_i32(table.data(), {1, blocks});
  batch.max_context = static_cast<int>(tokens);

  const int layers = config.layers;
  config.layers = 1;
  auto cache = backend.create_kv_cache({1, config.kv_heads, config.head_dim, kBlockSize, blocks});
  Tensor x = engine.embed(input_ids);
  std::vector<float> states(static_cast<size_t>(layers * tokens * hidden));
  for (int i = 0; i < layers; ++i) {
    const Decoder layer(backend, config, layer_slice(weights, static_cast<size_t>(i), 1));
    layer.forward(x, batch.token_pos, batch, *cache);
    backend.to_host_f32(x, states.data() + static_cast<size_t>(i * tokens * hidden));
  }
  w.add_f32("hidden_states", {layers, tokens, hidden}, states.data());

  config.layers = 0;
  const Decoder head(backend, config, layer_slice(weights, 0, 0));
  const Tensor logits = head.logits(x, batch.token_pos);  // positions 0..T-1 are the row indices
  std::vector<float> host(static_cast<size_t>(logits.numel()));
  backend.to_host_f32(logits, host.data());
  w.add_f32("logits_all", {tokens, logits.cols()}, host.data());
}

}  // namespace moxin::cli
