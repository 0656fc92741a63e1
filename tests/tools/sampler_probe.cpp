// Test probe for the sampler: reads a JSON array of requests on stdin,
//   [{"logits": [...], "context": [ids], "params": {"temperature": .., "top_k": .., "top_p": ..,
//     "min_p": .., "repetition_penalty": .., "seed": ..}, "samples": n}, ...]
// and prints one result per request: {"distribution": [...], "samples": [n ids drawn in a row
// by one Sampler]} or {"error": "<message>"}. Used by tests/py/test_sampler.py.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "probe_json.hpp"
#include "runtime/sampler.hpp"

namespace {

moxin::SamplingParams parse_params(const nlohmann::json& j) {
  moxin::SamplingParams p;
  moxin::probe::read_sampling(j, p);
  return p;
}

nlohmann::json answer(const nlohmann::json& request) {
  const auto logits = request.at("logits").get<std::vector<float>>();
  const auto context = request.value("context", std::vector<int32_t>{});
  moxin::Sampler sampler(parse_params(request.value("params", nlohmann::json::object())));
  std::vector<int32_t> samples(request.value("samples", 0));
  for (int32_t& id : samples) id = sampler.sample(logits, context);
  return {{"distribution", sampler.distribution(logits, context)}, {"samples", samples}};
}

}  // namespace

int main() {
  nlohmann::json requests;
  try {
    requests = nlohmann::json::parse(std::cin);
  } catch (const nlohmann::json::exception& e) {
    std::fprintf(stderr, "sampler_probe: bad request JSON: %s\n", e.what());
    return 2;
  }
  nlohmann::json results = nlohmann::json::array();
  for (const auto& request : requests) {
    try {
      results.push_back(answer(request));
    } catch (const std::exception& e) {  // moxin::Error, or a malformed request
      results.push_back({{"error", e.what()}});
    }
  }
  std::cout << results.dump() << '\n';
  return 0;
}
