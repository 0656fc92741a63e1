// Conversions between the public API's types and the runtime's.
#pragma once

#include <vector>

#include "moxin/moxin.hpp"
#include "runtime/engine.hpp"
#include "runtime/prompt.hpp"
#include "runtime/sampler.hpp"
#include "runtime/sequence_core.hpp"

namespace moxin {

inline std::vector<ChatTurn> to_chat_turns(const Prompt& prompt) {
  std::vector<ChatTurn> turns;
  turns.reserve(prompt.turns.size());
  for (const Turn& t : prompt.turns) turns.push_back({t.user, t.assistant});
  return turns;
}

inline EngineOptions to_engine_options(const LoadOptions& o) {
  EngineOptions e;
  e.backend.device = o.device == Device::CUDA ? DeviceKind::CUDA : DeviceKind::CPU;
  e.backend.threads = o.threads;
  e.backend.gpu = o.gpu;
  e.max_context = o.max_context;
  e.quantize_bits = o.quantize_bits;
  e.quantize_group_size = o.quantize_group_size;
  e.quantize_fp8 = o.quantize_fp8;
  e.kv_cache_fp8 = o.kv_cache_fp8;
  e.progress = o.progress;
  return e;
}

inline SamplingParams to_sampling_params(const GenerateOptions& o) {
  SamplingParams p;
  p.temperature = o.temperature;
  p.top_k = o.top_k;
  p.top_p = o.top_p;
  p.min_p = o.min_p;
  p.repetition_penalty = o.repetition_penalty;
  p.seed = o.seed;
  return p;
}

inline SequenceOptions to_sequence_options(const GenerateOptions& o) {
  SequenceOptions s;
  s.sampling = to_sampling_params(o);
  s.max_tokens = o.max_tokens;
  s.stop = o.stop;
  return s;
}

}  // namespace moxin
