// Test probe for the library's generations: reads on stdin
//   {"model": DIR, "threads": N, "requests": [{"turns": [{"user": .., "assistant": ..}],
//     "image": PATH or "", "max_tokens": .., "temperature": .., "top_k": .., "top_p": ..,
//     "min_p": .., "repetition_penalty": .., "seed": .., "stop": [..]}, ...]}
// runs every request with generate(), one after another, then all of them at once with
// submit(), each on its own thread, and prints
//   {"sequential": [result...], "concurrent": [result...], "generate_after_submit": result,
//    "conversation_after_submit": "<error message>"}
// with result = {"tokens": [...], "text": "...", "pieces_text": "...", "finish": "eos|stop|length"}
// or {"error": "<message>"}. Used by tests/py/test_library_concurrency.py.
#include <cstdio>
#include <iostream>
#include <latch>
#include <nlohmann/json.hpp>
#include <thread>

#include "moxin/moxin.hpp"
#include "probe_json.hpp"

namespace {

using nlohmann::json;

moxin::Prompt parse_prompt(const json& j) {
  moxin::Prompt p;
  for (const json& t : j.at("turns")) p.turns.push_back({t.at("user"), t.value("assistant", "")});
  const std::string image = j.value("image", "");
  if (!image.empty()) p.image = moxin::read_file(image);
  return p;
}

moxin::GenerateOptions parse_options(const json& j) {
  moxin::GenerateOptions o;
  o.max_tokens = j.value("max_tokens", o.max_tokens);
  moxin::probe::read_sampling(j, o);
  o.stop = j.value("stop", o.stop);
  return o;
}

const char* finish_name(moxin::FinishReason r) {
  switch (r) {
    case moxin::FinishReason::Eos: return "eos";
    case moxin::FinishReason::Stop: return "stop";
    case moxin::FinishReason::Length: return "length";
    case moxin::FinishReason::None: break;
  }
  return "none";
}

// Reads a generation to its end.
json drain(moxin::Generation gen) {
  std::string pieces;
  while (auto piece = gen.next()) pieces += piece->text;
  return {{"tokens", gen.tokens()}, {"text", gen.text()}, {"pieces_text", pieces},
          {"finish", finish_name(gen.finish_reason())}};
}

template <class F>
json guarded(F run) {
  try {
    return run();
  } catch (const std::exception& e) {
    return {{"error", e.what()}};
  }
}

}  // namespace

int main() {
  try {
    const json input = json::parse(std::cin);
    auto model = moxin::Model::load(input.at("model"), {.threads = input.value("threads", 0)});
    const json& requests = input.at("requests");
    json out;

    for (const json& r : requests)
      out["sequential"].push_back(guarded([&] { return drain(model->generate(parse_prompt(r), parse_options(r))); }));

    std::vector<json> concurrent(requests.size());
    std::latch start(static_cast<std::ptrdiff_t>(requests.size()));
    std::vector<std::thread> threads;
    for (size_t i = 0; i < requests.size(); ++i) {
      threads.emplace_back([&, i] {
        start.arrive_and_wait();  // all submit together, so they share steps
        concurrent[i] = guarded([&] { return drain(model->submit(parse_prompt(requests[i]), parse_options(requests[i]))); });
      });
    }
    for (std::thread& t : threads) t.join();
    out["concurrent"] = concurrent;

    out["generate_after_submit"] =
        guarded([&] { return drain(model->generate(parse_prompt(requests[0]), parse_options(requests[0]))); });
    std::string conversation_error = "no error";
    try {
      model->conversation();
    } catch (const moxin::Error& e) {
      conversation_error = e.what();
    }
    out["conversation_after_submit"] = conversation_error;
    std::cout << out.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "generation_probe: %s\n", e.what());
    return 1;
  }
}
