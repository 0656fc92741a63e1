// JSON helpers shared by the test probes.
#pragma once

#include <nlohmann/json.hpp>

namespace moxin::probe {

// Reads the sampling fields both moxin::SamplingParams and moxin::GenerateOptions have (the
// same names as in JSON); absent ones keep their defaults.
template <class Sampling>
void read_sampling(const nlohmann::json& j, Sampling& s) {
  s.temperature = j.value("temperature", s.temperature);
  s.top_k = j.value("top_k", s.top_k);
  s.top_p = j.value("top_p", s.top_p);
  s.min_p = j.value("min_p", s.min_p);
  s.repetition_penalty = j.value("repetition_penalty", s.repetition_penalty);
  s.seed = j.value("seed", s.seed);
}

}  // namespace moxin::probe
