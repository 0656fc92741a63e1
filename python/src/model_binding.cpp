// moxin._core.Model and Generation. Every call into the engine runs with the GIL released, so
// other Python threads keep running during loads, prefills and decode steps.
//
// generate()'s generations compute on their callers' threads and share the model's engine,
// which serves one thread at a time (moxin.hpp): each model has a lock that every engine step
// of its generations takes, so Python threads may drive several generations at once.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bindings.hpp"
#include "moxin/moxin.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace moxin::python {
namespace {

struct PyModel {
  std::unique_ptr<Model> model;
  std::mutex engine;  // held by each engine step of this model's generations
};

std::optional<std::string> finish_name(FinishReason r) {
  switch (r) {
    case FinishReason::Eos:
    case FinishReason::Stop:
      return "stop";  // as `moxin generate --json` and the OpenAI API name both
    case FinishReason::Length:
      return "length";
    case FinishReason::None:
      break;
  }
  return std::nullopt;  // None: still running
}

class PyGeneration {
 public:
  PyGeneration(PyModel& owner, Generation gen) : owner_(owner), gen_(std::move(gen)) {}
  PyGeneration(const PyGeneration&) = delete;
  PyGeneration& operator=(const PyGeneration&) = delete;
  ~PyGeneration() {
    // An unfinished generation frees its KV blocks in the shared engine: under the lock.
    nb::gil_scoped_release nogil;
    std::lock_guard lock(owner_.engine);
    gen_.reset();
  }

  // The next non-empty text piece (pieces held back for UTF-8 or a pending stop string carry
  // none), or nullopt at the end.
  std::optional<std::string> next_text() {
    nb::gil_scoped_release nogil;
    while (auto piece = step())
      if (!piece->text.empty()) return std::move(piece->text);
    return std::nullopt;
  }

  // Runs to the end; returns the whole text. Between steps it looks for signals with the GIL
  // held, so Ctrl-C stops a long generation (KeyboardInterrupt) instead of waiting for its end.
  std::string finish() {
    for (;;) {
      bool more = false;
      {
        nb::gil_scoped_release nogil;
        more = step().has_value();
      }
      if (!more) return gen_->text();
      if (PyErr_CheckSignals() != 0) throw nb::python_error();
    }
  }

  std::vector<int32_t> tokens() const { return gen_->tokens(); }
  std::string text() const { return gen_->text(); }
  std::optional<std::string> finish_reason() const { return finish_name(gen_->finish_reason()); }
  nb::dict timings() const {
    const Timings& t = gen_->timings();
    nb::dict d;
    d["load_ms"] = t.load_ms;
    d["vision_ms"] = t.vision_ms;
    d["prefill_ms"] = t.prefill_ms;
    d["decode_ms"] = t.decode_ms;
    d["prompt_tokens"] = t.prompt_tokens;
    d["generated_tokens"] = t.generated_tokens;
    d["decode_tokens_per_s"] = t.decode_tokens_per_s();
    return d;
  }

 private:
  // One engine step under the model's lock (taken per step, so that generations driven by
  // other threads advance in between). Called without the GIL.
  std::optional<Piece> step() {
    std::lock_guard lock(owner_.engine);
    return gen_->next();
  }

  PyModel& owner_;
  std::optional<Generation> gen_;
};

std::unique_ptr<PyModel> load(const std::string& path, const std::string& device, int gpu, int threads,
                              int max_context, uint64_t max_image_pixels, int quantize_bits, int group_size,
                              bool quantize_fp8, bool kv_cache_fp8) {
  if (device != "cpu" && device != "cuda")
    throw Error("[load] device must be \"cpu\" or \"cuda\" (\"cuda:N\" for GPU N), got \"" + device + "\"");
  LoadOptions o;
  o.device = device == "cuda" ? Device::CUDA : Device::CPU;
  o.gpu = gpu;
  o.threads = threads;
  o.max_context = max_context;
  o.max_image_pixels = max_image_pixels;
  o.quantize_bits = quantize_bits;
  o.quantize_group_size = group_size;
  o.quantize_fp8 = quantize_fp8;
  o.kv_cache_fp8 = kv_cache_fp8;
  auto py = std::make_unique<PyModel>();
  nb::gil_scoped_release nogil;
  py->model = Model::load(path, o);
  return py;
}

PyGeneration* generate(PyModel& self, const std::vector<std::pair<std::string, std::string>>& turns,
                       const nb::bytes& image, int max_tokens, float temperature, int top_k, float top_p,
                       float min_p, float repetition_penalty, uint64_t seed, std::vector<std::string> stop) {
  Prompt prompt;
  for (const auto& [user, assistant] : turns) prompt.turns.push_back({user, assistant});
  const auto* bytes = static_cast<const uint8_t*>(image.data());
  prompt.image.assign(bytes, bytes + image.size());
  GenerateOptions o;
  o.max_tokens = max_tokens;
  o.temperature = temperature;
  o.top_k = top_k;
  o.top_p = top_p;
  o.min_p = min_p;
  o.repetition_penalty = repetition_penalty;
  o.seed = seed;
  o.stop = std::move(stop);
  nb::gil_scoped_release nogil;
  std::lock_guard lock(self.engine);
  return new PyGeneration(self, self.model->generate(prompt, o));
}

}  // namespace

void bind_model(nb::module_& m) {
  nb::class_<PyGeneration>(m, "Generation",
                           "A running generation: iterate for its text pieces; dropping it unfinished cancels it.")
      .def("__iter__", [](PyGeneration& self) -> PyGeneration& { return self; }, nb::rv_policy::reference)
      .def("__next__",
           [](PyGeneration& g) {
             std::optional<std::string> piece = g.next_text();
             if (!piece) throw nb::stop_iteration();
             return *piece;
           })
      .def("finish", &PyGeneration::finish, "Runs the generation to its end and returns the whole text.")
      .def_prop_ro("tokens", &PyGeneration::tokens, "The generated token ids so far (no EOS).")
      .def_prop_ro("text", &PyGeneration::text, "The generated text so far (stop strings cut).")
      .def_prop_ro("finish_reason", &PyGeneration::finish_reason,
                   "\"stop\" (EOS or a stop string), \"length\" (max_tokens), or None while running.")
      .def_prop_ro("timings", &PyGeneration::timings,
                   "load_ms, vision_ms, prefill_ms, decode_ms, prompt_tokens, generated_tokens, decode_tokens_per_s.");

  nb::class_<PyModel>(m, "Model", "A loaded model (moxin::Model).")
      .def_static("load", &load, "path"_a, "device"_a, "gpu"_a, "threads"_a, "max_context"_a, "max_image_pixels"_a,
                  "quantize_bits"_a, "group_size"_a, "quantize_fp8"_a, "kv_cache_fp8"_a)
      // The generation uses the model's engine: it keeps the Python model alive.
      .def("generate", &generate, "turns"_a, "image"_a, "max_tokens"_a, "temperature"_a, "top_k"_a, "top_p"_a,
           "min_p"_a, "repetition_penalty"_a, "seed"_a, "stop"_a, nb::keep_alive<0, 1>(), nb::rv_policy::take_ownership)
      .def(
          "tokenize",
          [](const PyModel& self, const std::string& text, bool add_bos) {
            nb::gil_scoped_release nogil;
            return self.model->tokenize(text, add_bos);
          },
          "text"_a, "add_bos"_a)
      .def(
          "detokenize",
          [](const PyModel& self, const std::vector<int32_t>& ids) {
            nb::gil_scoped_release nogil;
            return self.model->detokenize(ids);
          },
          "ids"_a)
      .def_prop_ro("info",
                   [](const PyModel& self) {
                     const ModelInfo i = self.model->info();
                     nb::dict d;
                     d["vocab_size"] = i.vocab_size;
                     d["hidden_size"] = i.hidden_size;
                     d["layers"] = i.layers;
                     d["image_tokens"] = i.image_tokens;
                     d["device"] = i.device;
                     d["load_ms"] = self.model->load_ms();
                     return d;
                   });
}

}  // namespace moxin::python
