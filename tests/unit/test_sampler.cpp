// Sampler contract checks that need no reference implementation: parameter validation, refusal
// of non-finite logits and bad context ids, seeding, and the trivial top_k = 1 case. The
// distributions themselves are checked against transformers in tests/py/test_sampler.py.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "moxin/error.hpp"
#include "runtime/sampler.hpp"
#include "test_sampler_seed.hpp"

namespace moxin {
namespace {

using sampler_test::printed_seed;

constexpr size_t kVocab = 32064;

std::vector<float> random_logits(std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> logits(kVocab);
  for (float& x : logits) x = normal(rng);
  return logits;
}

// Runs `body` and checks it throws moxin::Error whose message contains every fragment.
template <typename Body>
void expect_error(Body body, const std::vector<std::string>& fragments) {
  try {
    body();
    ADD_FAILURE() << "no moxin::Error thrown; expected one mentioning " << fragments.front();
  } catch (const Error& e) {
    for (const std::string& f : fragments)
      EXPECT_NE(std::string(e.what()).find(f), std::string::npos)
          << "message '" << e.what() << "' lacks '" << f << "'";
  }
}

TEST(SamplingParams, RefusesAbsurdValuesNamingParameterAndRange) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  struct Bad {
    SamplingParams params;
    std::vector<std::string> fragments;
  };
  const auto temperature = [](float v) { SamplingParams p; p.temperature = v; return p; };
  const auto top_k = [](int v) { SamplingParams p; p.top_k = v; return p; };
  const auto top_p = [](float v) { SamplingParams p; p.top_p = v; return p; };
  const auto min_p = [](float v) { SamplingParams p; p.min_p = v; return p; };
  const auto penalty = [](float v) { SamplingParams p; p.repetition_penalty = v; return p; };
  const std::vector<Bad> bad = {
      {temperature(-0.5f), {"[sampler]", "temperature=-0.5", "> 0"}},
      {temperature(nan), {"temperature=nan"}},
      {temperature(inf), {"temperature=inf"}},
      {top_k(-1), {"top_k=-1", "0 (off)"}},
      {top_p(0.0f), {"top_p=0", "(0, 1]"}},
      {top_p(1.5f), {"top_p=1.5", "(0, 1]"}},
      {top_p(nan), {"top_p=nan"}},
      {min_p(-0.1f), {"min_p=-0.1", "[0, 1)"}},
      {min_p(1.0f), {"min_p=1", "[0, 1)"}},
      {min_p(nan), {"min_p=nan"}},
      {penalty(0.0f), {"repetition_penalty=0", "> 0"}},
      {penalty(-1.2f), {"repetition_penalty=-1.2"}},
      {penalty(nan), {"repetition_penalty=nan"}},
      {penalty(inf), {"repetition_penalty=inf"}},
  };
  for (const Bad& b : bad) {
    expect_error([&] { b.params.validate(); }, b.fragments);
    expect_error([&] { Sampler s(b.params); }, b.fragments);  // the constructor validates too
  }
  // The edges of every allowed range are accepted.
  for (const SamplingParams& ok : {temperature(0.0f), temperature(1e-3f), top_k(0), top_k(1 << 30),
                                   top_p(1.0f), top_p(1e-6f), min_p(0.0f), min_p(0.999f),
                                   penalty(1e-3f), penalty(100.0f)})
    EXPECT_NO_THROW(ok.validate());
}

TEST(Sampler, RefusesNonFiniteLogits) {
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity()}) {
    std::vector<float> logits(kVocab, 0.5f);
    logits[1234] = bad;
    for (const float temperature : {0.0f, 0.8f}) {
      SamplingParams p;
      p.temperature = temperature;
      Sampler sampler(p);
      expect_error([&] { sampler.sample(logits, {}); },
                   {"[sampler]", "token id 1234", "non-finite"});
      expect_error([&] { (void)sampler.distribution(logits, {}); }, {"token id 1234"});
    }
  }
  Sampler sampler{SamplingParams{}};
  expect_error([&] { sampler.sample({}, {}); }, {"[sampler]", "empty logits"});
}

TEST(Sampler, RefusesContextIdsOutsideTheVocabulary) {
  const std::vector<float> logits(kVocab, 0.0f);
  SamplingParams p;
  p.repetition_penalty = 1.2f;
  Sampler sampler(p);
  for (const int32_t id : {-1, static_cast<int32_t>(kVocab), 1 << 30}) {
    const std::vector<int32_t> context = {5, id};
    expect_error([&] { sampler.sample(logits, context); },
                 {"[sampler]", "context token id " + std::to_string(id), "[0, 32064)"});
  }
}

TEST(Sampler, RefusesScoresThatOverflow) {
  std::vector<float> logits(kVocab, 1.0f);
  logits[7] = 3e38f;
  SamplingParams cold;
  cold.temperature = 1e-3f;  // 3e38 / 1e-3 is beyond float
  Sampler sampler(cold);
  expect_error([&] { sampler.sample(logits, {}); }, {"[sampler]", "token id 7", "overflowed"});
  logits[7] = -3e38f;
  SamplingParams harsh;
  harsh.repetition_penalty = 10.0f;  // -3e38 * 10 is beyond float
  Sampler penalised(harsh);
  const std::vector<int32_t> context = {7};
  expect_error([&] { penalised.sample(logits, context); }, {"token id 7", "overflowed"});
}

TEST(Sampler, SameSeedSameTokensOtherSeedOtherTokens) {
  std::mt19937_64 rng(printed_seed());
  const std::vector<float> logits = random_logits(rng);
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = rng();
  const auto draw = [&](uint64_t seed) {
    SamplingParams q = p;
    q.seed = seed;
    Sampler sampler(q);
    std::vector<int32_t> ids(100);
    for (int32_t& id : ids) id = sampler.sample(logits, {});
    return ids;
  };
  EXPECT_EQ(draw(p.seed), draw(p.seed));
  EXPECT_NE(draw(p.seed), draw(p.seed + 1));
}

TEST(Sampler, TopKOfOneAlwaysTakesTheLargestLogit) {
  std::mt19937_64 rng(printed_seed());
  SamplingParams p;
  p.temperature = 1.5f;
  p.top_k = 1;
  p.top_p = 0.9f;
  p.seed = rng();
  Sampler sampler(p);  // one sampler for all rounds: nothing may leak from step to step
  for (int round = 0; round < 20; ++round) {
    std::vector<float> logits = random_logits(rng);
    logits.resize(round % 2 == 0 ? kVocab : 1000);
    size_t largest = 0;
    for (size_t i = 1; i < logits.size(); ++i)
      if (logits[i] > logits[largest]) largest = i;
    EXPECT_EQ(sampler.sample(logits, {}), static_cast<int32_t>(largest));
    const std::vector<float> dist = sampler.distribution(logits, {});
    EXPECT_EQ(dist[largest], 1.0f);
  }
}

// The rule for equal scores at the top-p cut (where transformers' order depends on torch.sort):
// lower ids rank first. Four equal scores have probability 1/4 each; with top_p = 0.5 the
// cumulative sums from the top are 1, 3/4, 1/2, 1/4 and only those above 1/2 are kept.
TEST(Sampler, EqualScoresAtTheTopPCutKeepLowerIds) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.5f;
  Sampler sampler(p);
  EXPECT_EQ(sampler.distribution(std::vector<float>(4, 2.0f), {}),
            (std::vector<float>{0.5f, 0.5f, 0.0f, 0.0f}));
  // Scores one denormal step apart are as good as equal, and must not upset the bucketing.
  const float tiny = std::numeric_limits<float>::denorm_min();
  EXPECT_EQ(sampler.distribution(std::vector<float>{-tiny, 0.0f}, {}),
            (std::vector<float>{0.0f, 1.0f}));
}

}  // namespace
}  // namespace moxin
