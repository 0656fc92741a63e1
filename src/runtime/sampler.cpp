#include "runtime/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

#include "core/check.hpp"

namespace moxin {
namespace {

// The tokens still in the running, in increasing id order, with their current scores and
// weights exp(score - max score). The most likely token survives every filter, so the weights
// are computed once and each softmax only needs the sum over the current survivors.
struct Candidates {
  std::vector<int32_t> ids;
  std::vector<float> scores;
  std::vector<float> weights;  // float32 exp, as torch.softmax computes it
  double total_weight = 0;
  float max_score = 0;

  size_t size() const { return ids.size(); }

  // What torch.softmax gives the warpers (float32; equal up to rounding of the last bit).
  std::vector<float> probs_f32() const {
    std::vector<float> probs(size());
    for (size_t i = 0; i < size(); ++i) probs[i] = static_cast<float>(weights[i] / total_weight);
    return probs;
  }

  template <typename Keep>  // Keep(size_t index) -> bool
  void filter(Keep keep) {
    size_t out = 0;
    total_weight = 0;
    for (size_t i = 0; i < size(); ++i) {
      if (!keep(i)) continue;
      ids[out] = ids[i];
      scores[out] = scores[i];
      weights[out] = weights[i];
      total_weight += weights[i];
      ++out;
    }
    ids.resize(out);
    scores.resize(out);
    weights.resize(out);
  }
};

// A NaN or inf logit means a broken model or an overflow upstream: refuse it by name.
std::vector<float> checked_copy(std::span<const float> logits) {
  MOXIN_CHECK(!logits.empty(), "[sampler] empty logits: expected one score per vocabulary id");
  std::vector<float> scores(logits.begin(), logits.end());
  for (size_t i = 0; i < scores.size(); ++i)
    MOXIN_CHECK(std::isfinite(scores[i]), "[sampler] logit of token id ", i, " is ", scores[i],
                ": the model produced non-finite logits (broken weights or a numerical overflow)");
  return scores;
}

// An extreme penalty or a tiny temperature can push finite logits to +-inf, after which the
// softmax would be NaN; refuse rather than return a garbage token.
void check_not_overflowed(float score, size_t id, const SamplingParams& p) {
  MOXIN_CHECK(std::isfinite(score), "[sampler] score of token id ", id, " overflowed to ", score,
              " after repetition_penalty=", p.repetition_penalty, " and temperature=",
              p.temperature, ": use milder sampling parameters");
}

// CTRL-style, as transformers: each distinct id of the context is penalised once; a negative
// score is multiplied by the penalty, a positive one divided, so both move towards "less likely".
void apply_repetition_penalty(std::vector<float>& scores, std::span<const int32_t> context,
                              const SamplingParams& p) {
  std::vector<uint8_t> seen(p.repetition_penalty != 1.0f ? scores.size() : 0, 0);
  for (const int32_t id : context) {
    MOXIN_CHECK(id >= 0 && static_cast<size_t>(id) < scores.size(), "[sampler] context token id ",
                id, " is outside the vocabulary [0, ", scores.size(), ")");
    if (p.repetition_penalty == 1.0f || seen[id]) continue;
    seen[id] = 1;
    float& s = scores[id];
    s = s < 0 ? s * p.repetition_penalty : s / p.repetition_penalty;
    check_not_overflowed(s, id, p);
  }
}

void apply_temperature(std::vector<float>& scores, const SamplingParams& p) {
  if (p.temperature == 1.0f) return;
  for (size_t i = 0; i < scores.size(); ++i) {
    scores[i] /= p.temperature;
    check_not_overflowed(scores[i], i, p);
  }
}

int32_t argmax(const std::vector<float>& scores) {  // first index on ties, as torch.argmax
  return static_cast<int32_t>(std::max_element(scores.begin(), scores.end()) - scores.begin());
}

// transformers keeps every score >= the k-th largest, so ties at the boundary all survive.
Candidates top_k_candidates(std::vector<float> scores, int top_k) {
  const size_t k = top_k > 0 ? std::min(static_cast<size_t>(top_k), scores.size()) : scores.size();
  Candidates c;
  if (k == scores.size()) {
    c.ids.resize(scores.size());
    std::iota(c.ids.begin(), c.ids.end(), 0);
    c.scores = std::move(scores);
  } else {
    std::vector<float> copy = scores;
    std::nth_element(copy.begin(), copy.begin() + (k - 1), copy.end(), std::greater<float>());
    const float threshold = copy[k - 1];
    for (size_t i = 0; i < scores.size(); ++i) {
      if (scores[i] < threshold) continue;
      c.ids.push_back(static_cast<int32_t>(i));
      c.scores.push_back(scores[i]);
    }
  }
  c.max_score = *std::max_element(c.scores.begin(), c.scores.end());
  c.weights.resize(c.size());
  for (size_t i = 0; i < c.size(); ++i)
    c.total_weight += c.weights[i] = std::exp(c.scores[i] - c.max_score);
  return c;
}

// Ranked by score, then lower id (= lower candidate index) first: torch.sort's order among
// equal scores is unspecified. The score sits next to the index so comparisons stay in cache.
struct Ranked {
  float score;
  uint32_t index;
  bool operator<(const Ranked& o) const { return score != o.score ? score > o.score : index < o.index; }
};

// transformers sorts ascending and drops every token whose cumulative probability (summed from
// the least likely up; torch's CPU cumsum accumulates in double and stores float) is
// <= 1 - top_p, always keeping the most likely token. From the top, a token's cumulative sum is
// the total minus the mass ranked above it, so the kept tokens are a prefix in rank order.
// Scores are bucketed first: the mass of the buckets settles every token except those near the
// cut, and only those are ranked (bisection with nth_element), so no step sorts the vocabulary.
void apply_top_p(Candidates& c, float top_p) {
  const std::vector<float> probs = c.probs_f32();
  const double total = std::accumulate(probs.begin(), probs.end(), 0.0);
  const auto threshold = static_cast<float>(1.0 - double(top_p));
  const auto kept = [&](size_t rank, double mass_above) {
    return rank == 0 || static_cast<float>(total - mass_above) > threshold;
  };

  // Bucket 0 holds the top scores; a lower score never lands in a higher bucket, so every token
  // of bucket b has the mass of buckets < b above it, and at most that of buckets <= b.
  constexpr size_t kBuckets = 256;
  // (In double: a float range as narrow as one denormal step still gives a finite scale.)
  const double min = *std::min_element(c.scores.begin(), c.scores.end());
  const double per_unit = min < c.max_score ? (kBuckets - 1) / (c.max_score - min) : 0.0;
  std::vector<uint8_t> bucket(c.size());
  std::vector<double> bucket_mass(kBuckets, 0.0);
  for (size_t i = 0; i < c.size(); ++i) {
    bucket[i] = static_cast<uint8_t>(
        std::min((c.max_score - double(c.scores[i])) * per_unit, double(kBuckets - 1)));
    bucket_mass[bucket[i]] += probs[i];
  }
  // Buckets before `first` are kept whole and those after `last` dropped whole; the margin is
  // far above float rounding of the cumulative sum, so only [first, last] needs ranking.
  constexpr double kMargin = 1e-6;
  size_t first = 0;
  double above_first = 0;
  while (first + 1 < kBuckets && total - (above_first + bucket_mass[first]) > threshold + kMargin)
    above_first += bucket_mass[first++];
  size_t last = first;
  for (double through_last = above_first + bucket_mass[first];
       last + 1 < kBuckets && total - through_last > threshold - kMargin;)
    through_last += bucket_mass[++last];

  std::vector<uint8_t> keep(c.size(), 0);
  std::vector<Ranked> near_cut;
  size_t kept_whole = 0;
  for (size_t i = 0; i < c.size(); ++i) {
    if (bucket[i] < first) {
      keep[i] = 1;
      ++kept_whole;
    } else if (bucket[i] <= last) {
      near_cut.push_back({c.scores[i], static_cast<uint32_t>(i)});
    }
  }
  // Invariant: near_cut[0, lo) is kept (with mass_lo above its successor), near_cut[hi, end)
  // dropped, and near_cut[lo, hi) holds exactly the ranks lo..hi-1 among them.
  size_t lo = 0, hi = near_cut.size();
  double mass_lo = above_first;
  while (lo < hi) {
    const size_t mid = lo + (hi - lo) / 2;
    std::nth_element(near_cut.begin() + lo, near_cut.begin() + mid, near_cut.begin() + hi);
    double mass_mid = mass_lo;
    for (size_t r = lo; r < mid; ++r) mass_mid += probs[near_cut[r].index];
    if (kept(kept_whole + mid, mass_mid)) {
      lo = mid + 1;
      mass_lo = mass_mid + probs[near_cut[mid].index];
    } else {
      hi = mid;
    }
  }
  for (size_t r = 0; r < lo; ++r) keep[near_cut[r].index] = 1;
  c.filter([&](size_t i) { return keep[i] != 0; });
}

// Drops tokens less likely than min_p times the most likely one (float32 arithmetic, as torch).
void apply_min_p(Candidates& c, float min_p) {
  const std::vector<float> probs = c.probs_f32();
  const float threshold = min_p * *std::max_element(probs.begin(), probs.end());
  c.filter([&](size_t i) { return probs[i] >= threshold; });
}

}  // namespace

void SamplingParams::validate() const {
  MOXIN_CHECK(std::isfinite(temperature) && temperature >= 0, "[sampler] temperature=",
              temperature, " is invalid: use 0 for greedy decoding or a finite value > 0");
  MOXIN_CHECK(top_k >= 0, "[sampler] top_k=", top_k,
              " is invalid: use 0 (off) or a positive number of tokens");
  MOXIN_CHECK(top_p > 0 && top_p <= 1, "[sampler] top_p=", top_p,
              " is invalid: it must lie in (0, 1] (1 = off)");
  MOXIN_CHECK(min_p >= 0 && min_p < 1, "[sampler] min_p=", min_p,
              " is invalid: it must lie in [0, 1) (0 = off)");
  MOXIN_CHECK(std::isfinite(repetition_penalty) && repetition_penalty > 0,
              "[sampler] repetition_penalty=", repetition_penalty,
              " is invalid: it must be finite and > 0 (1 = off, > 1 discourages repeats)");
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {
  params_.validate();
}

Sampler::Survivors Sampler::survivors(std::span<const float> logits,
                                      std::span<const int32_t> context) const {
  std::vector<float> scores = checked_copy(logits);
  apply_repetition_penalty(scores, context, params_);
  if (params_.greedy()) return {{argmax(scores)}, {1.0f}, 1.0};
  apply_temperature(scores, params_);
  Candidates c = top_k_candidates(std::move(scores), params_.top_k);
  if (params_.top_p < 1.0f) apply_top_p(c, params_.top_p);
  if (params_.min_p > 0.0f) apply_min_p(c, params_.min_p);
  return {std::move(c.ids), std::move(c.weights), c.total_weight};
}

std::vector<float> Sampler::distribution(std::span<const float> logits,
                                         std::span<const int32_t> context) const {
  const Survivors s = survivors(logits, context);
  std::vector<float> dist(logits.size(), 0.0f);
  for (size_t i = 0; i < s.ids.size(); ++i)
    dist[s.ids[i]] = static_cast<float>(s.weights[i] / s.total_weight);
  return dist;
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> context) {
  const Survivors s = survivors(logits, context);
  if (params_.greedy()) return s.ids[0];
  // Inverse CDF over the survivors in id order; the last one absorbs rounding at the top end.
  // Every sampled step takes exactly one draw, so step n always uses the n-th number.
  const double target = next_uniform() * s.total_weight;
  double cumulative = 0;
  for (size_t i = 0; i + 1 < s.ids.size(); ++i) {
    cumulative += s.weights[i];
    if (target < cumulative) return s.ids[i];
  }
  return s.ids.back();
}

double Sampler::next_uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

}  // namespace moxin
