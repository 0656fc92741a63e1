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
  void resize(size_t n) {
    ids.resize(n);
    scores.resize(n);
    weights.resize(n);
  }
  template <typename Keep>  // Keep(size_t index) -> bool
  void filter(Keep keep);
};

// Ranked by score, then lower id (= lower candidate index) first: torch.sort's order among
// equal scores is unspecified. The score sits next to the index so comparisons stay in cache.
struct Ranked {
  float score;
  uint32_t index;
  bool operator<(const Ranked& o) const {
    return score != o.score ? score > o.score : index < o.index;
  }
};

// Sums in double with four independent accumulators (a single chain waits on every addition).
double sum_f64(std::span<const float> values) {
  double lanes[4] = {0, 0, 0, 0};
  size_t i = 0;
  for (; i + 4 <= values.size(); i += 4)
    for (size_t j = 0; j < 4; ++j) lanes[j] += values[i + j];
  for (; i < values.size(); ++i) lanes[0] += values[i];
  return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}

template <typename Keep>
void Candidates::filter(Keep keep) {
  size_t out = 0;
  for (size_t i = 0; i < size(); ++i) {  // branch-free: keep() is rarely predictable
    ids[out] = ids[i];
    scores[out] = scores[i];
    weights[out] = weights[i];
    out += keep(i) ? 1 : 0;
  }
  resize(out);
  total_weight = sum_f64(weights);
}

// Index of the first NaN or inf, or values.size().
size_t first_non_finite(std::span<const float> values) {
  return std::find_if(values.begin(), values.end(), [](float x) { return !std::isfinite(x); }) -
         values.begin();
}

// An extreme penalty or a tiny temperature can push finite logits to +-inf, after which the
// softmax would be NaN; refuse rather than return a garbage token.
void check_not_overflowed(float score, size_t id, const SamplingParams& p) {
  MOXIN_CHECK(std::isfinite(score), "[sampler] score of token id ", id, " overflowed to ", score,
              " after repetition_penalty=", p.repetition_penalty, " and temperature=",
              p.temperature, ": use milder sampling parameters");
}

}  // namespace

// The working state of one step; the buffers keep their capacity from step to step.
struct Sampler::Scratch {
  std::vector<float> scores;     // the whole vocabulary: penalised, then tempered
  std::vector<uint8_t> seen;     // context ids already penalised
  std::vector<float> selection;  // top-k's partially ordered copy of the scores
  Candidates candidates;
  std::vector<float> probs;      // float32 softmax of the candidates (top-p, min-p)
  std::vector<uint8_t> bucket;   // top-p: score bucket of each candidate
  std::vector<Ranked> near_cut;  // top-p: candidates whose fate needs ranking

  void load(std::span<const float> logits);
  void penalise(std::span<const int32_t> context, const SamplingParams& p);
  void temper(const SamplingParams& p);
  void keep_argmax();
  void keep_top_k(int top_k);
  double compute_probs();
  void keep_top_p(float top_p);
  void keep_min_p(float min_p);
};

// A NaN or inf logit means a broken model or an overflow upstream: refuse it by name.
void Sampler::Scratch::load(std::span<const float> logits) {
  MOXIN_CHECK(!logits.empty(), "[sampler] empty logits: expected one score per vocabulary id");
  const size_t id = first_non_finite(logits);
  MOXIN_CHECK(id == logits.size(), "[sampler] logit of token id ", id, " is ", logits[id],
              ": the model produced non-finite logits (broken weights or a numerical overflow)");
  scores.assign(logits.begin(), logits.end());
}

// CTRL-style, as transformers: each distinct id of the context is penalised once; a negative
// score is multiplied by the penalty, a positive one divided, so both move towards "less likely".
void Sampler::Scratch::penalise(std::span<const int32_t> context, const SamplingParams& p) {
  const bool active = p.repetition_penalty != 1.0f;
  if (active) seen.assign(scores.size(), 0);
  for (const int32_t id : context) {
    MOXIN_CHECK(id >= 0 && static_cast<size_t>(id) < scores.size(), "[sampler] context token id ",
                id, " is outside the vocabulary [0, ", scores.size(), ")");
    if (!active || seen[id]) continue;
    seen[id] = 1;
    float& s = scores[id];
    s = s < 0 ? s * p.repetition_penalty : s / p.repetition_penalty;
    check_not_overflowed(s, id, p);
  }
}

void Sampler::Scratch::temper(const SamplingParams& p) {
  if (p.temperature == 1.0f) return;
  for (float& s : scores) s /= p.temperature;
  const size_t id = first_non_finite(scores);
  if (id < scores.size()) check_not_overflowed(scores[id], id, p);
}

void Sampler::Scratch::keep_argmax() {  // first index on ties, as torch.argmax
  const auto best = std::max_element(scores.begin(), scores.end());
  candidates.resize(1);
  candidates.ids[0] = static_cast<int32_t>(best - scores.begin());
  candidates.scores[0] = candidates.max_score = *best;
  candidates.weights[0] = 1.0f;
  candidates.total_weight = 1.0;
}

// transformers keeps every score >= the k-th largest, so ties at the boundary all survive.
void Sampler::Scratch::keep_top_k(int top_k) {
  Candidates& c = candidates;
  const size_t n = scores.size();
  const size_t k = top_k > 0 ? std::min(static_cast<size_t>(top_k), n) : n;
  if (k == n) {
    c.ids.resize(n);
    std::iota(c.ids.begin(), c.ids.end(), 0);
    c.scores.swap(scores);  // both buffers survive for the next step
  } else {
    selection.assign(scores.begin(), scores.end());
    std::nth_element(selection.begin(), selection.begin() + (k - 1), selection.end(),
                     std::greater<float>());
    const float threshold = selection[k - 1];
    c.ids.clear();
    c.scores.clear();
    for (size_t i = 0; i < n; ++i) {
      if (scores[i] < threshold) continue;
      c.ids.push_back(static_cast<int32_t>(i));
      c.scores.push_back(scores[i]);
    }
  }
  c.max_score = *std::max_element(c.scores.begin(), c.scores.end());
  c.weights.resize(c.size());
  for (size_t i = 0; i < c.size(); ++i) c.weights[i] = std::exp(c.scores[i] - c.max_score);
  c.total_weight = sum_f64(c.weights);
}

// What torch.softmax gives the warpers (float32; equal up to rounding of the last bit); returns
// the sum of those float32 probabilities.
double Sampler::Scratch::compute_probs() {
  const Candidates& c = candidates;
  probs.resize(c.size());
  for (size_t i = 0; i < c.size(); ++i)
    probs[i] = static_cast<float>(c.weights[i] / c.total_weight);
  return sum_f64(probs);
}

// transformers sorts ascending and drops every token whose cumulative probability (summed from
// the least likely up; torch's CPU cumsum accumulates in double and stores float) is
// <= 1 - top_p, always keeping the most likely token. From the top, a token's cumulative sum is
// the total minus the mass ranked above it, so the kept tokens are a prefix in rank order.
// Scores are bucketed first: the mass of the buckets settles every token except those near the
// cut, and only those are ranked (bisection with nth_element), so no step sorts the vocabulary.
void Sampler::Scratch::keep_top_p(float top_p) {
  Candidates& c = candidates;
  const double total = compute_probs();
  const auto threshold = static_cast<float>(1.0 - double(top_p));
  const auto kept = [&](size_t rank, double mass_above) {
    return rank == 0 || static_cast<float>(total - mass_above) > threshold;
  };

  // Bucket 0 holds the top scores; a lower score never lands in a higher bucket, so every token
  // of bucket b has the mass of buckets < b above it, and at most that of buckets <= b.
  // (In double: a float range as narrow as one denormal step still gives a finite scale.)
  constexpr size_t kBuckets = 256;
  const double min = *std::min_element(c.scores.begin(), c.scores.end());
  const double per_unit = min < c.max_score ? (kBuckets - 1) / (c.max_score - min) : 0.0;
  double bucket_mass[kBuckets] = {};
  bucket.resize(c.size());
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

  near_cut.clear();
  size_t kept_whole = 0;
  for (size_t i = 0; i < c.size(); ++i) {
    kept_whole += bucket[i] < first ? 1 : 0;
    if (bucket[i] >= first && bucket[i] <= last)
      near_cut.push_back({c.scores[i], static_cast<uint32_t>(i)});
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
  // `bucket` becomes the keep flag: whole buckets by their rank, near_cut by the bisection.
  for (uint8_t& b : bucket) b = b < first;
  for (size_t r = 0; r < near_cut.size(); ++r) bucket[near_cut[r].index] = r < lo;
  c.filter([&](size_t i) { return bucket[i] != 0; });
}

// Drops tokens less likely than min_p times the most likely one (float32 arithmetic, as torch).
void Sampler::Scratch::keep_min_p(float min_p) {
  compute_probs();
  const float threshold = min_p * *std::max_element(probs.begin(), probs.end());
  candidates.filter([&](size_t i) { return probs[i] >= threshold; });
}

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

Sampler::Sampler(const SamplingParams& params)
    : params_(params), rng_(params.seed), scratch_(std::make_unique<Scratch>()) {
  params_.validate();
}
Sampler::~Sampler() = default;
Sampler::Sampler(Sampler&&) noexcept = default;
Sampler& Sampler::operator=(Sampler&&) noexcept = default;

void Sampler::select(std::span<const float> logits, std::span<const int32_t> context,
                     Scratch& scratch) const {
  scratch.load(logits);
  scratch.penalise(context, params_);
  if (params_.greedy()) return scratch.keep_argmax();
  scratch.temper(params_);
  scratch.keep_top_k(params_.top_k);
  if (params_.top_p < 1.0f) scratch.keep_top_p(params_.top_p);
  if (params_.min_p > 0.0f) scratch.keep_min_p(params_.min_p);
}

std::vector<float> Sampler::distribution(std::span<const float> logits,
                                         std::span<const int32_t> context) const {
  Scratch scratch;
  select(logits, context, scratch);
  const Candidates& c = scratch.candidates;
  std::vector<float> dist(logits.size(), 0.0f);
  for (size_t i = 0; i < c.size(); ++i)
    dist[c.ids[i]] = static_cast<float>(c.weights[i] / c.total_weight);
  return dist;
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> context) {
  // Every sampled step takes exactly one draw, so step n always uses the n-th number.
  return sample_at(logits, context, params_.greedy() ? 0.0 : next_uniform());
}

int32_t Sampler::sample_at(std::span<const float> logits, std::span<const int32_t> context, double uniform) {
  select(logits, context, *scratch_);
  const Candidates& c = scratch_->candidates;
  if (params_.greedy()) return c.ids[0];
  // Inverse CDF over the survivors in id order; the last one absorbs rounding at the top end.
  const double target = uniform * c.total_weight;
  double cumulative = 0;
  for (size_t i = 0; i + 1 < c.size(); ++i) {
    cumulative += c.weights[i];
    if (target < cumulative) return c.ids[i];
  }
  return c.ids.back();
}

double Sampler::next_uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

}  // namespace moxin
