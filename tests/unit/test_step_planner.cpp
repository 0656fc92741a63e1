// The scheduler's planner without an engine: a small real block pool (KvBlockPool, KvBlockRefs,
// PrefixCache are host-side bookkeeping) and a fake KV store that records which token each
// cache slot holds. Running a plan writes the planned positions' tokens into the store after
// checking that every earlier position of the sequence reads back its own token, so prefix
// reuse, preemption and recompute are checked against what the sequence's inputs say, not
// against the planner's own arithmetic.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <set>

#include "moxin/error.hpp"
#include "runtime/kv_block_pool.hpp"
#include "runtime/kv_block_refs.hpp"
#include "runtime/prefix_cache.hpp"
#include "runtime/step_planner.hpp"
#include "test_sampler_seed.hpp"

namespace moxin {
namespace {

// A generation as the test sees it (it outlives the planner's sequence): its prompt tokens,
// then one token per step once its inputs are all cached; the token it "samples" after n
// generated ones is next_token(id, n), so the expected output is known whatever the planner does.
struct Track {
  static int32_t next_token(int id, int n) { return 1000 + 100 * id + n; }

  int id = 0;
  std::vector<int32_t> tokens;  // prompt, then the generated tokens fed back
  size_t prompt_positions = 0;
  int max_tokens = 0;
  int generated = 0;
  bool cancel = false;
  bool finished = false;          // generated all its tokens
  std::optional<PlanEnd> ending;  // the planner ended it
};

struct FakeSequence final : PlannedSequence {
  FakeSequence(std::shared_ptr<Track> track, int block_size) : t(std::move(track)) {
    prompt_positions = t->prompt_positions;
    nothing_to_generate = t->max_tokens == 0;
    std::vector<PositionInput> inputs;
    for (int32_t token : t->tokens) inputs.push_back({token, -1});
    prompt_keys = prefix_block_keys(std::nullopt, inputs, block_size, SIZE_MAX);
  }
  size_t positions() const override { return t->tokens.size(); }
  bool cancelled() const override { return t->cancel; }

  std::shared_ptr<Track> t;
};

class PlannerHarness {
 public:
  PlannerHarness(int blocks, int block_size, PlannerOptions options)
      : pool_(blocks, block_size), refs_(pool_), prefix_(refs_), planner_(options, refs_, prefix_) {}

  std::shared_ptr<Track> add(int id, std::vector<int32_t> prompt, int max_tokens) {
    auto t = std::make_shared<Track>();
    t->id = id;
    t->prompt_positions = prompt.size();
    t->tokens = std::move(prompt);
    t->max_tokens = max_tokens;
    planner_.enqueue(std::make_unique<FakeSequence>(t, pool_.block_size()));
    return t;
  }

  // One iteration as the scheduler runs it, retiring what ended at its end. Returns the plan:
  // its counts stay valid, but its sequence pointers may name retired (freed) sequences, so the
  // ids of the admitted and planned sequences are kept as admitted() and chunk_ids().
  StepPlan step() {
    StepPlan plan = planner_.plan();
    admitted_.clear();
    chunk_ids_.clear();
    for (PlannedSequence* s : plan.admitted) admitted_.push_back(fake(s).t->id);
    for (const StepPlan::Chunk& c : plan.chunks) chunk_ids_.push_back(fake(c.sequence).t->id);
    for (const StepPlan::Ending& e : plan.ended) fake(e.sequence).t->ending = e.why;
    for (const StepPlan::Chunk& c : plan.chunks) forward(fake(c.sequence), c.count);
    for (const StepPlan::Chunk& c : plan.chunks) {
      FakeSequence& s = fake(c.sequence);
      planner_.offer_prompt_blocks(s);
      if (s.pending() == 0) sample(s);
    }
    planner_.retire();
    check_block_accounting();
    return plan;
  }

  const std::vector<int>& admitted() const { return admitted_; }  // of the last step()
  const std::vector<int>& chunk_ids() const { return chunk_ids_; }
  StepPlanner& planner() { return planner_; }
  KvBlockRefs& refs() { return refs_; }
  PrefixCache& prefix() { return prefix_; }
  int block_size() const { return pool_.block_size(); }

 private:
  static FakeSequence& fake(PlannedSequence* s) { return static_cast<FakeSequence&>(*s); }

  int32_t& slot(const PlannedSequence& s, size_t position) {
    const int32_t block = s.kv.block_table.at(position / static_cast<size_t>(block_size()));
    return store_[block][position % static_cast<size_t>(block_size())];
  }

  // What attention would read must be the sequence's own inputs; then its new positions are written.
  void forward(FakeSequence& s, size_t count) {
    const Track& t = *s.t;
    const size_t begin = static_cast<size_t>(s.kv.length);
    ASSERT_LE(begin + count, t.tokens.size());
    ASSERT_GE(s.kv.block_table.size() * static_cast<size_t>(block_size()), begin + count);
    for (size_t p = 0; p < begin; ++p)
      ASSERT_EQ(slot(s, p), t.tokens[p]) << "sequence " << t.id << " reads a wrong token at position " << p;
    for (size_t p = begin; p < begin + count; ++p) {
      const int32_t block = s.kv.block_table[p / static_cast<size_t>(block_size())];
      ASSERT_EQ(refs_.references(block), 1) << "sequence " << t.id << " writes into shared block " << block;
      slot(s, p) = t.tokens[p];
    }
    s.kv.length += static_cast<int64_t>(count);
  }

  // Every position is computed (after a preemption: again), so its logits give the next token.
  static void sample(FakeSequence& s) {
    Track& t = *s.t;
    const int32_t token = Track::next_token(t.id, t.generated++);
    if (t.generated == t.max_tokens) {
      t.finished = true;
      s.done = true;
      return;
    }
    t.tokens.push_back(token);
  }

  // Every block is free or held (by sequences and the cache), never both, never lost.
  void check_block_accounting() {
    int held = 0;
    for (int b = 0; b < refs_.total_blocks(); ++b) held += refs_.references(b) > 0;
    ASSERT_EQ(held + refs_.free_blocks(), refs_.total_blocks());
  }

  KvBlockPool pool_;
  KvBlockRefs refs_;
  PrefixCache prefix_;
  StepPlanner planner_;
  std::map<int32_t, std::map<size_t, int32_t>> store_;  // block -> slot -> token
  std::vector<int> admitted_, chunk_ids_;
};

std::vector<int32_t> iota_tokens(int n, int32_t first) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) t[static_cast<size_t>(i)] = first + i;
  return t;
}

PlannerOptions options(int max_batch, int chunk, int budget, size_t min_rows = 1, bool prefix_cache = true) {
  return {.max_batch = max_batch, .prefill_chunk = chunk, .prefill_budget = budget, .prefix_cache = prefix_cache,
          .min_prefill_rows = min_rows};
}

TEST(StepPlanner, RefusesOptionsThatCannotWork) {
  KvBlockPool pool(8, 4);
  KvBlockRefs refs(pool);
  PrefixCache prefix(refs);
  EXPECT_THROW(StepPlanner(options(0, 16, 16), refs, prefix), Error);
  EXPECT_THROW(StepPlanner(options(4, 9, 16, 5), refs, prefix), Error);  // a chunk < 2 x min rows
  EXPECT_THROW(StepPlanner(options(4, 16, 8), refs, prefix), Error);     // budget < one chunk
}

TEST(StepPlanner, AdmitsInArrivalOrderUpToTheBatch) {
  PlannerHarness h(64, 4, options(2, 16, 32));
  h.add(0, iota_tokens(3, 10), 2);
  h.add(1, iota_tokens(3, 20), 4);
  h.add(2, iota_tokens(3, 30), 1);
  h.step();
  EXPECT_EQ(h.admitted(), (std::vector<int>{0, 1}));
  EXPECT_EQ(h.planner().queued(), 1u);
  h.step();  // sequence 0 generates its 2nd (last) token here
  EXPECT_TRUE(h.admitted().empty());
  h.step();  // its slot went to the next in line
  EXPECT_EQ(h.admitted(), (std::vector<int>{2}));
}

TEST(StepPlanner, ChunksWithinTheBudgetAndDecodesAlwaysRun) {
  PlannerHarness h(256, 4, options(8, 8, 12));
  h.add(0, iota_tokens(2, 10), 50);
  h.step();  // its prompt
  h.add(1, iota_tokens(30, 100), 5);
  h.add(2, iota_tokens(30, 200), 5);
  StepPlan plan = h.step();
  ASSERT_EQ(plan.chunks.size(), 2u);  // the decode, and one chunk of 8: another 8 exceeds the 4 left
  EXPECT_EQ(h.chunk_ids(), (std::vector<int>{0, 1}));
  EXPECT_EQ(plan.chunks[0].count, 1u);
  EXPECT_EQ(plan.chunks[1].count, 8u);
}

TEST(StepPlanner, NeverLeavesAChunkShorterThanTheBackendsMinimum) {
  PlannerHarness h(256, 4, options(4, 10, 10, 5));
  std::shared_ptr<Track> s = h.add(0, iota_tokens(12, 10), 1);
  StepPlan plan = h.step();
  ASSERT_EQ(plan.chunks.size(), 1u);
  EXPECT_EQ(plan.chunks[0].count, 7u);  // 10 would leave 2 (< 5) for the next chunk
  plan = h.step();
  EXPECT_EQ(plan.chunks[0].count, 5u);
  EXPECT_TRUE(s->finished);
}

TEST(StepPlanner, ReusesCachedPromptBlocksAndComputesTheRest) {
  const int bs = 4;
  PlannerHarness h(64, bs, options(4, 64, 64, 1));
  std::vector<int32_t> shared = iota_tokens(12, 10);
  h.add(0, shared, 1);
  h.step();
  EXPECT_EQ(h.prefix().size(), 3u);  // its three full prompt blocks
  std::vector<int32_t> longer = shared;
  longer.push_back(77);
  std::shared_ptr<Track> b = h.add(1, longer, 2);
  StepPlan plan = h.step();
  ASSERT_EQ(plan.chunks.size(), 1u);
  EXPECT_EQ(h.planner().stats().prefix_hit_blocks, 3u);
  EXPECT_EQ(plan.chunks[0].count, 1u);  // 13 positions, 12 from the cache
  // The same prompt exactly: its last block is computed again (the last position gives the
  // logits), so 2 blocks come from the cache.
  std::shared_ptr<Track> c = h.add(2, shared, 1);
  plan = h.step();
  EXPECT_EQ(h.planner().stats().prefix_hit_blocks, 5u);
  ASSERT_EQ(plan.chunks.size(), 2u);
  EXPECT_EQ(plan.chunks[1].count, 4u);
  while (!b->finished || !c->finished) h.step();
}

TEST(StepPlanner, PreemptsTheNewestAndItRecomputesWhatItHad) {
  // 5 blocks of 4: two sequences that each grow to 11 positions (3 blocks) cannot both stay.
  PlannerHarness h(5, 4, options(4, 16, 32, 1, /*prefix_cache=*/false));
  std::shared_ptr<Track> old = h.add(0, iota_tokens(4, 10), 8);
  std::shared_ptr<Track> young = h.add(1, iota_tokens(4, 20), 8);
  int steps = 0;
  while (!(old->finished && young->finished)) {
    h.step();
    ASSERT_LT(++steps, 100) << "no progress";
  }
  EXPECT_GE(h.planner().stats().preemptions, 1u);
  EXPECT_EQ(old->generated, 8);
  EXPECT_EQ(young->generated, 8);
  for (int n = 0; n < 7; ++n) {  // what each fed back is what it sampled, recomputed or not
    EXPECT_EQ(old->tokens[4 + static_cast<size_t>(n)], Track::next_token(0, n));
    EXPECT_EQ(young->tokens[4 + static_cast<size_t>(n)], Track::next_token(1, n));
  }
  EXPECT_EQ(h.refs().free_blocks(), 5);
}

TEST(StepPlanner, CancelledSequencesEndAndFreeTheirBlocks) {
  PlannerHarness h(64, 4, options(1, 16, 16, 1, false));
  std::shared_ptr<Track> running = h.add(0, iota_tokens(6, 10), 50);
  std::shared_ptr<Track> waiting = h.add(1, iota_tokens(6, 20), 50);
  h.step();
  EXPECT_LT(h.refs().free_blocks(), 64);
  running->cancel = true;
  waiting->cancel = true;
  StepPlan plan = h.step();
  ASSERT_EQ(plan.ended.size(), 1u);  // a waiting one that never ran is forgotten, not reported
  EXPECT_EQ(plan.ended[0].why, PlanEnd::Cancelled);
  EXPECT_TRUE(plan.chunks.empty());
  EXPECT_EQ(h.planner().running(), 0u);
  EXPECT_EQ(h.planner().queued(), 0u);
  EXPECT_EQ(h.refs().free_blocks(), 64);
}

TEST(StepPlanner, EndsWhatHasNothingToGenerateOrCanNeverFit) {
  PlannerHarness h(4, 4, options(4, 32, 32));
  std::shared_ptr<Track> zero = h.add(0, iota_tokens(3, 10), 0);
  std::shared_ptr<Track> huge = h.add(1, iota_tokens(20, 10), 1);  // 21 positions > 16 in the cache
  h.step();
  EXPECT_EQ(zero->ending, PlanEnd::NothingToGenerate);
  EXPECT_EQ(huge->ending, PlanEnd::DoesNotFit);
  EXPECT_EQ(h.planner().running(), 0u);
}

// Random arrivals, prompt lengths, shared prefixes, budgets, cache sizes and cancellations:
// every step stays within its limits, sequences are first admitted in arrival order, and every
// sequence not cancelled ends with exactly its expected tokens (the harness also checks each
// step's KV reads and block accounting).
TEST(StepPlanner, RandomWorkloadsAgainstTheSimpleModel) {
  const uint64_t seed = sampler_test::printed_seed();
  std::mt19937_64 rng(seed);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int round = 0; round < 40; ++round) {
    const int bs = uniform(1, 8);
    const size_t min_rows = static_cast<size_t>(uniform(1, 5));
    const int chunk = uniform(static_cast<int>(2 * min_rows), 24);
    PlannerOptions o = options(uniform(1, 6), chunk, chunk + uniform(0, 24), min_rows, uniform(0, 1) == 1);
    const int max_positions = uniform(8, 40);
    const int blocks = (max_positions + bs - 1) / bs + uniform(1, 12);
    PlannerHarness h(blocks, bs, o);
    std::vector<std::vector<int32_t>> prefixes;
    for (int i = 0; i < 3; ++i) prefixes.push_back(iota_tokens(uniform(1, max_positions / 2), 10 * (i + 1)));

    std::vector<std::shared_ptr<Track>> sequences;
    std::vector<int> first_admitted;
    std::set<int> seen;
    const int total = uniform(1, 14);
    int arrived = 0;
    for (int step = 0; step < 2000; ++step) {
      while (arrived < total && uniform(0, 2) == 0) {
        std::vector<int32_t> prompt = prefixes[static_cast<size_t>(uniform(0, 2))];
        const int extra = uniform(0, max_positions / 2);
        for (int i = 0; i < extra; ++i) prompt.push_back(500 + uniform(0, 3));
        const int max_tokens = uniform(0, max_positions - static_cast<int>(prompt.size()));
        sequences.push_back(h.add(arrived++, prompt, max_tokens));
      }
      if (!sequences.empty() && uniform(0, 30) == 0) sequences[static_cast<size_t>(uniform(0, arrived - 1))]->cancel = true;
      StepPlan plan = h.step();
      if (HasFatalFailure()) FAIL() << "round " << round << " step " << step;

      ASSERT_LE(plan.chunks.size(), static_cast<size_t>(o.max_batch));
      size_t prefill = 0;
      for (const StepPlan::Chunk& c : plan.chunks) {
        ASSERT_LE(c.count, static_cast<size_t>(o.prefill_chunk));
        ASSERT_GE(c.count, 1u);
        if (c.count > 1) prefill += c.count;
      }
      ASSERT_LE(prefill, static_cast<size_t>(o.prefill_budget));
      for (const int id : h.admitted()) {
        if (seen.insert(id).second) first_admitted.push_back(id);
      }
      const bool all_over = arrived == total && std::all_of(sequences.begin(), sequences.end(), [](const auto& s) {
        return s->finished || s->ending || s->cancel;
      });
      if (all_over && h.planner().running() == 0 && h.planner().queued() == 0) break;
    }
    ASSERT_TRUE(std::is_sorted(first_admitted.begin(), first_admitted.end())) << "round " << round;
    for (const auto& s : sequences) {
      if (s->cancel) continue;
      if (s->max_tokens == 0) {
        EXPECT_EQ(s->ending, PlanEnd::NothingToGenerate);
        continue;
      }
      ASSERT_TRUE(s->finished) << "round " << round << ": sequence " << s->id << " never finished";
      EXPECT_EQ(s->generated, s->max_tokens);
      for (int n = 0; n + 1 < s->max_tokens; ++n)
        EXPECT_EQ(s->tokens[s->prompt_positions + static_cast<size_t>(n)], Track::next_token(s->id, n));
    }
  }
}

}  // namespace
}  // namespace moxin
