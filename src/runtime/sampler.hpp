// Next-token selection from a step's logits: greedy argmax or seeded sampling with the
// repetition penalty, temperature, top-k, top-p and min-p, in the order and with the boundary
// rules of Hugging Face transformers' generate() (5.24, do_sample=True, one sequence).
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <vector>

namespace moxin {

struct SamplingParams {
  float temperature = 0.0f;         // 0 = greedy (argmax; ties -> lowest id)
  int top_k = 0;                    // 0 = off
  float top_p = 1.0f;               // 1 = off
  float min_p = 0.0f;               // 0 = off
  float repetition_penalty = 1.0f;  // 1 = off; applied once to every id in the context
  uint64_t seed = 0;                // same seed + same logits -> same tokens

  bool greedy() const { return temperature == 0.0f; }
  // Throws moxin::Error naming the parameter and its allowed range.
  void validate() const;
};

// One per sequence: it owns the random generator and reuses its buffers from step to step (not
// thread-safe; sample() allocates nothing once warm).
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  ~Sampler();
  Sampler(Sampler&&) noexcept;
  Sampler& operator=(Sampler&&) noexcept;

  // logits: one score per vocabulary id; context: the ids seen so far (prompt + generated),
  // used by the repetition penalty. Advances the generator (greedy does not use it).
  int32_t sample(std::span<const float> logits, std::span<const int32_t> context);
  // The uniform number in [0, 1) a sampled step draws (what sample() takes): a device sampler
  // (Backend::sample_tokens) receives it, so that step n of a seed always uses the n-th number.
  double draw() { return next_uniform(); }
  // sample() with the step's number given: the inverse CDF at `uniform` over the survivors.
  int32_t sample_at(std::span<const float> logits, std::span<const int32_t> context, double uniform);

  // The distribution sample() draws from (after penalty, temperature, top-k, top-p, min-p,
  // renormalised), one probability per id; one-hot at the argmax when greedy.
  std::vector<float> distribution(std::span<const float> logits,
                                  std::span<const int32_t> context) const;

  const SamplingParams& params() const { return params_; }

 private:
  struct Scratch;  // the step's working buffers, defined in sampler.cpp
  // Leaves the surviving ids and their weights in scratch.candidates.
  void select(std::span<const float> logits, std::span<const int32_t> context,
              Scratch& scratch) const;
  // A uniform double in [0, 1) from the top 53 bits of one draw (portable, unlike
  // std::uniform_real_distribution, whose algorithm each standard library picks).
  double next_uniform();

  SamplingParams params_;
  std::mt19937_64 rng_;  // its output sequence is fixed by the C++ standard
  std::unique_ptr<Scratch> scratch_;
};

}  // namespace moxin
