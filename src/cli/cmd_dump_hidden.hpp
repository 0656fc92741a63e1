// `moxin dump --hidden-states`: the decoder's residual stream after every layer and the logits
// of every prompt position, which the quantization quality report (bench/quant_quality.py)
// compares between a bf16 and a quantized engine.
#pragma once

#include <cstdint>
#include <vector>

namespace moxin {
class Engine;
class SafetensorsWriter;
}  // namespace moxin

namespace moxin::cli {

// Adds "hidden_states" f32 [layers, T, hidden] (each layer's output) and "logits_all" f32
// [T, vocab] for the text-only prompt `input_ids` (BOS first), computed on the engine's own
// (possibly quantized) decoder weights.
void add_hidden_states(SafetensorsWriter& w, Engine& engine, const std::vector<int32_t>& input_ids);

}  // namespace moxin::cli
