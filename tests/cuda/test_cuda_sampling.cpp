// Backend::sample_tokens on the GPU against the host sampler (runtime/sampler.hpp, itself tested
// against transformers' generate() in tests/py/test_sampler.py), at the same uniform numbers.
//
// Greedy rows must match exactly (the same float operations: penalty, argmax, lowest id on
// ties). Sampled rows must pick the host's token at every uniform number, except where the
// choice is within rounding of a boundary, which the two samplers may resolve differently
// (sampling.cu's header: CUDA's expf vs the C library's, another summation order, ~1e-7 of the
// mass). The test finds those cases with the host sampler alone: a uniform number within 1e-5
// of a cumulative boundary, or a row whose survivor set changes when its logits are scaled by
// 1 +- 1e-5 (a top-p / min-p / top-k cut at the edge). Both are skipped and counted; most
// draws must be compared.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <span>
#include <string>

#include "core/check.hpp"
#include "cuda_test_support.hpp"
#include "runtime/sampler.hpp"

namespace moxin::cuda_test {
namespace {

TokenDraw draw_of(const SamplingParams& p, double uniform, const std::vector<int32_t>& penalized) {
  return TokenDraw{p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty, uniform,
                   p.repetition_penalty != 1.0f ? penalized : std::vector<int32_t>{}};
}

std::vector<int32_t> distinct(std::vector<int32_t> ids) {
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

std::vector<bool> support(const std::vector<float>& dist) {
  std::vector<bool> s(dist.size());
  for (size_t i = 0; i < dist.size(); ++i) s[i] = dist[i] > 0.0f;
  return s;
}

std::string describe(const SamplingParams& p) {
  return "temperature=" + std::to_string(p.temperature) + " top_k=" + std::to_string(p.top_k) +
         " top_p=" + std::to_string(p.top_p) + " min_p=" + std::to_string(p.min_p) +
         " penalty=" + std::to_string(p.repetition_penalty);
}

class CudaSampling : public CudaOpsTest {
 protected:
  // The device's draw of each row (Backend::sample_tokens into a poisoned tensor), read back.
  bool draw(const Tensor& logits, std::span<const TokenDraw> draws, std::vector<int32_t>& ids) {
    Tensor drawn = upload_i32(std::vector<int32_t>(draws.size(), -2), {static_cast<int64_t>(draws.size()), 1});
    if (!backend().sample_tokens(logits, draws, drawn)) return false;
    const std::unique_ptr<I32Readback> read = backend().read_i32_async(drawn);
    const std::span<const int32_t> got = read->wait();
    ids.assign(got.begin(), got.end());
    return true;
  }

  // Logits of one row: normal scores of scale `spread`, or (tied) snapped to a grid of 1/4 so
  // that many ids share a score.
  std::vector<float> row_logits(int vocab, float spread, bool tied) {
    std::vector<float> x = randn(static_cast<size_t>(vocab), spread);
    if (tied)
      for (float& v : x) v = std::round(v * 4.0f) / 4.0f;
    return x;
  }
};

TEST_F(CudaSampling, GreedyEqualsTheHostArgmaxAfterThePenalty) {
  for (const int vocab : {1, 5, 1000, 32064, 40000}) {
    const int rows = 23;
    std::vector<float> logits;
    std::vector<TokenDraw> draws;
    std::vector<int32_t> expected;
    for (int r = 0; r < rows; ++r) {
      std::vector<float> x = row_logits(vocab, 2.0f, r % 3 == 0);
      // A planted tie for the maximum at a random id (the lower id must win).
      const auto top = std::max_element(x.begin(), x.end()) - x.begin();
      x[static_cast<size_t>(randint(0, vocab - 1))] = x[static_cast<size_t>(top)];
      SamplingParams p;
      p.repetition_penalty = r % 2 ? 1.0f + 0.5f * static_cast<float>(randint(1, 4)) : 1.0f;
      std::vector<int32_t> context(static_cast<size_t>(randint(0, 40)));
      for (int32_t& id : context) id = randint(0, vocab - 1);
      Sampler host(p);
      expected.push_back(host.sample(x, context));
      draws.push_back(draw_of(p, 0.0, distinct(context)));
      logits.insert(logits.end(), x.begin(), x.end());
    }
    std::vector<int32_t> ids(static_cast<size_t>(rows), -2);
    ASSERT_TRUE(draw(upload(logits, {rows, vocab}), draws, ids)) << "vocab " << vocab;
    EXPECT_EQ(ids, expected) << "vocab " << vocab << " seed " << seed_;
  }
}

TEST_F(CudaSampling, SampledTokensEqualTheHostSamplersAtTheSameUniformNumbers) {
  const auto params = [](float t, int k, float top_p, float min_p, float penalty) {
    SamplingParams p;
    p.temperature = t;
    p.top_k = k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.repetition_penalty = penalty;
    return p;
  };
  const std::vector<SamplingParams> cases = {
      params(1.0f, 0, 1.0f, 0.0f, 1.0f),   params(0.7f, 0, 1.0f, 0.0f, 1.0f),  params(1.0f, 50, 1.0f, 0.0f, 1.0f),
      params(1.0f, 1, 1.0f, 0.0f, 1.0f),   params(1.0f, 0, 0.9f, 0.0f, 1.0f),  params(0.6f, 0, 0.5f, 0.0f, 1.0f),
      params(1.0f, 0, 1e-4f, 0.0f, 1.0f),  params(1.0f, 0, 1.0f, 0.05f, 1.0f), params(1.3f, 200, 0.8f, 0.02f, 1.3f),
      params(0.9f, 0, 0.95f, 0.0f, 0.8f),  params(1.5f, 7, 1.0f, 0.3f, 1.0f),
  };
  constexpr int kDraws = 48;  // uniform numbers per row, stratified over [0, 1)
  int compared = 0, near_boundary = 0, edge_rows = 0, rows_total = 0;
  for (const int vocab : {7, 3000, 32064}) {
    for (const SamplingParams& p : cases) {
      for (const bool tied : {false, true}) {
        ++rows_total;
        const std::vector<float> x = row_logits(vocab, tied ? 2.0f : 3.0f, tied);
        std::vector<int32_t> context;
        for (int i = 0; i < 30; ++i) context.push_back(randint(0, vocab - 1));
        const std::vector<int32_t> penalized = distinct(context);
        Sampler host(p);
        const std::vector<float> dist = host.distribution(x, context);
        // A cut at the edge: the survivors change under a relative nudge of the scores.
        bool edge = false;
        for (const float scale : {1.0f + 1e-5f, 1.0f - 1e-5f}) {
          std::vector<float> nudged = x;
          for (float& v : nudged) v *= scale;
          edge |= support(host.distribution(nudged, context)) != support(dist);
        }
        if (edge) {
          ++edge_rows;
          continue;
        }
        std::vector<double> boundaries;  // cumulative mass after each survivor, in id order
        double mass = 0;
        for (const float q : dist)
          if (q > 0.0f) boundaries.push_back(mass += q);
        std::vector<float> logits;
        std::vector<TokenDraw> draws;
        std::vector<double> uniforms;
        for (int j = 0; j < kDraws; ++j) {
          const double u = (j + std::uniform_real_distribution<double>(0.0, 1.0)(rng_)) / kDraws;
          uniforms.push_back(u);
          draws.push_back(draw_of(p, u, penalized));
          logits.insert(logits.end(), x.begin(), x.end());
        }
        std::vector<int32_t> ids(kDraws, -2);
        ASSERT_TRUE(draw(upload(logits, {kDraws, vocab}), draws, ids));
        for (int j = 0; j < kDraws; ++j) {
          const double u = uniforms[static_cast<size_t>(j)];
          const bool close = std::any_of(boundaries.begin(), boundaries.end() - 1,
                                         [&](double b) { return std::abs(u * mass - b) < 1e-5 * mass; });
          if (close) {
            ++near_boundary;
            continue;
          }
          ++compared;
          ASSERT_EQ(ids[static_cast<size_t>(j)], host.sample_at(x, context, u))
              << describe(p) << " vocab " << vocab << (tied ? " tied" : "") << " u=" << u << " seed " << seed_;
        }
      }
    }
  }
  std::printf("[sampling] %d draws compared, %d within 1e-5 of a boundary, %d of %d rows with a cut at the edge\n",
              compared, near_boundary, edge_rows, rows_total);
  EXPECT_LE(edge_rows, rows_total / 10) << "too many rows skipped to call the comparison a test";
  EXPECT_GE(compared, (rows_total - edge_rows) * kDraws * 9 / 10);
}

TEST_F(CudaSampling, NonFiniteScoresComeBackForTheHostToName) {
  const int vocab = 100;
  std::vector<float> logits = randn(5 * vocab);
  logits[0 * vocab + 17] = std::numeric_limits<float>::quiet_NaN();  // as loaded
  logits[1 * vocab + 3] = std::numeric_limits<float>::infinity();
  logits[2 * vocab + 9] = -3e38f;  // x 10 by the penalty: -inf
  logits[3 * vocab + 4] = 3e38f;   // / 1e-3 by the temperature: inf
  SamplingParams greedy, penalised, cold;
  penalised.repetition_penalty = 10.0f;
  cold.temperature = 1e-3f;
  const std::vector<TokenDraw> draws = {draw_of(greedy, 0, {}), draw_of(cold, 0.5, {}), draw_of(penalised, 0, {9}),
                                        draw_of(cold, 0.5, {}), draw_of(greedy, 0, {})};
  std::vector<int32_t> ids(5, -2);
  ASSERT_TRUE(draw(upload(logits, {5, vocab}), draws, ids));
  EXPECT_EQ(ids[0], -1);
  EXPECT_EQ(ids[1], -1);
  EXPECT_EQ(ids[2], -1);
  EXPECT_EQ(ids[3], -1);
  EXPECT_EQ(ids[4], std::max_element(logits.begin() + 4 * vocab, logits.end()) - (logits.begin() + 4 * vocab));

  std::vector<int32_t> one(1);
  const std::vector<TokenDraw> outside = {draw_of(penalised, 0, {vocab})};
  EXPECT_THROW(draw(upload(randn(vocab), {1, vocab}), outside, one), Error);
  EXPECT_THROW(draw(upload(randn(2 * vocab), {2, vocab}), outside, one), Error);
}

// The scheduler's step issued ahead (runtime/scheduler.hpp): a step's tokens drawn into a device
// tensor, the next step's embedding taking some rows from there before the host has read them,
// then the read. The drawn ids must be the host sampler's, the embedding rows those of the drawn
// ids (or of the given ids where a row has no source), and a second draw into the same tensor
// issued before the first read is waited for must not change what that read gives.
TEST_F(CudaSampling, DrawnTokensFeedTheNextEmbeddingBeforeTheHostReadsThem) {
  const int vocab = 1000, hidden = 40, rows = 11;
  HostTensor table = host_tensor("embed", {vocab, hidden}, DType::BF16, true);
  const Linear embed = prepare(table);

  std::vector<float> logits;
  std::vector<TokenDraw> draws;
  std::vector<int32_t> expected;
  for (int r = 0; r < rows; ++r) {
    const std::vector<float> x = row_logits(vocab, 2.0f, r % 4 == 0);
    SamplingParams p;  // greedy: the host's choice is exact
    p.repetition_penalty = r % 2 ? 1.5f : 1.0f;
    std::vector<int32_t> context(static_cast<size_t>(randint(0, 20)));
    for (int32_t& id : context) id = randint(0, vocab - 1);
    expected.push_back(Sampler(p).sample(x, context));
    draws.push_back(draw_of(p, 0.0, distinct(context)));
    logits.insert(logits.end(), x.begin(), x.end());
  }
  std::vector<int32_t> poison(rows + 5, -7);
  Tensor drawn = upload_i32(poison, {rows + 5, 1});
  Tensor first = drawn.rows_view(0, rows);
  ASSERT_TRUE(backend().sample_tokens(upload(logits, {rows, vocab}), draws, first));
  const std::unique_ptr<I32Readback> read = backend().read_i32_async(first);

  // The next step: 7 rows, some from the draw (out of order, one twice), some given.
  const std::vector<int32_t> sources = {3, -1, 0, 10, -1, 3, 7};
  std::vector<int32_t> given(sources.size());
  for (int32_t& id : given) id = randint(0, vocab - 1);
  const int count = static_cast<int>(sources.size());
  Tensor source_tensor = upload_i32(sources, {count});
  Tensor y = poisoned({count, hidden});
  backend().embedding(upload_i32(given, {count}), embed, y, {&source_tensor, &drawn});
  // A later draw into the same rows (the step after), issued before the first read is waited for.
  std::vector<float> later = randn(static_cast<size_t>(rows) * vocab, 2.0f);
  const std::vector<TokenDraw> greedy(rows);
  ASSERT_TRUE(backend().sample_tokens(upload(later, {rows, vocab}), greedy, first));
  const std::unique_ptr<I32Readback> later_read = backend().read_i32_async(first);

  const std::span<const int32_t> got = read->wait();
  EXPECT_EQ(std::vector<int32_t>(got.begin(), got.end()), expected) << "seed " << seed_;
  std::vector<double> ref(static_cast<size_t>(count) * hidden);
  for (int i = 0; i < count; ++i) {
    const int32_t id = sources[static_cast<size_t>(i)] >= 0 ? expected[static_cast<size_t>(sources[static_cast<size_t>(i)])]
                                                            : given[static_cast<size_t>(i)];
    for (int c = 0; c < hidden; ++c)
      ref[static_cast<size_t>(i) * hidden + c] = table.values[static_cast<size_t>(id) * hidden + c];
  }
  expect_close("embedding of drawn tokens", download(y), ref, 0.0);
  const std::span<const int32_t> second = later_read->wait();
  for (int r = 0; r < rows; ++r) {
    const auto row = later.begin() + static_cast<ptrdiff_t>(r) * vocab;
    EXPECT_EQ(second[static_cast<size_t>(r)], std::max_element(row, row + vocab) - row) << "row " << r;
  }
  Tensor too_short = drawn.rows_view(0, rows - 1);
  EXPECT_THROW(backend().sample_tokens(upload(logits, {rows, vocab}), draws, too_short), Error);
}

}  // namespace
}  // namespace moxin::cuda_test
