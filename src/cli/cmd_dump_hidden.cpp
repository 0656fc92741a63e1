#include "cli/cmd_dump_hidden.hpp"

#include <numeric>

#include "io/safetensors_writer.hpp"
#include "model/decoder.hpp"
#include "runtime/engine.hpp"

namespace moxin::cli {
namespace {

constexpr int kBlockSize = 16;

}  // namespace

// Runs the engine's own decoder (the Linears it prepared, quantized or not, on any backend)
// over the prompt with a KV cache of its own, reading each layer's output as it goes. The
// last position's logits equal the engine's (the parity test checks it).
void add_hidden_states(SafetensorsWriter& w, Engine& engine, const std::vector<int32_t>& input_ids) {
  Backend& backend = engine.backend();
  const Decoder& decoder = engine.model().decoder();
  const DecoderConfig& config = decoder.config();
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

  auto cache = backend.create_kv_cache(
      {config.layers, config.kv_heads, config.head_dim, kBlockSize, blocks, engine.kv_cache().config().dtype});
  Tensor x = engine.embed(input_ids);
  std::vector<float> states(static_cast<size_t>(config.layers * tokens * hidden));
  decoder.forward(x, batch.token_pos, batch, *cache, [&](int layer, const Tensor& out) {
    backend.to_host_f32(out, states.data() + static_cast<size_t>(layer * tokens * hidden));
  });
  w.add_f32("hidden_states", {config.layers, tokens, hidden}, states.data());

  const Tensor logits = decoder.logits(x, batch.token_pos);  // positions 0..T-1 are the row indices
  std::vector<float> host(static_cast<size_t>(logits.numel()));
  backend.to_host_f32(logits, host.data());
  w.add_f32("logits_all", {tokens, logits.cols()}, host.data());
}

}  // namespace moxin::cli
