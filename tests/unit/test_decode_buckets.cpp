// The graph buckets of captured decode steps (runtime/decode_graphs.hpp), by their contract:
// a batch pads to a bucket that holds it with at most a third of it padding; a context pads to
// a bucket that holds it, never past the pool's capacity, growing with the context, within a
// quarter octave for the smallest batches and at the next power of two (from 256) for the rest.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "runtime/decode_graphs.hpp"
#include "test_sampler_seed.hpp"

namespace moxin {
namespace {

int next_power_of_two_from_256(int context) {
  int p = 256;
  while (p < context) p *= 2;
  return p;
}

TEST(DecodeBuckets, BatchesPadByAtMostAThird) {
  for (int batch = 1; batch <= 256; ++batch) {
    const int bucket = DecodeGraphs::batch_bucket(batch);
    EXPECT_GE(bucket, batch);
    if (batch <= 4) {
      EXPECT_EQ(bucket, batch);
    }
    EXPECT_LE(3 * (bucket - batch), bucket) << "batch " << batch << " pads to " << bucket;
    if (batch > 1) {
      EXPECT_GE(bucket, DecodeGraphs::batch_bucket(batch - 1));
    }
  }
}

TEST(DecodeBuckets, ContextsPadWithinAQuarterOctaveForSmallBatches) {
  std::mt19937_64 rng(sampler_test::printed_seed());
  for (const int capacity : {256, 1000, 4096, 32768, std::uniform_int_distribution<int>(300, 40000)(rng)})
    for (const int batch : {1, 2, 3, 8, 32, 256}) {
      int previous = 0;
      for (int context = 1; context <= capacity; ++context) {
        const int bucket = DecodeGraphs::context_bucket(batch, context, capacity);
        const int octave = next_power_of_two_from_256(context);
        ASSERT_GE(bucket, context) << "batch " << batch << " context " << context;
        ASSERT_LE(bucket, capacity);
        ASSERT_GE(bucket, previous) << "buckets shrink at context " << context;
        previous = bucket;
        if (batch <= DecodeGraphs::kFineContextBatch) {
          ASSERT_LT(bucket - context, std::max(octave / 8, 256)) << "batch " << batch << " context " << context;
          if (bucket < capacity) {
            ASSERT_EQ(bucket % std::max(octave / 8, 256 / 8), 0) << "batch " << batch << " context " << context;
          }
        } else {
          ASSERT_EQ(bucket, std::min(octave, capacity)) << "batch " << batch << " context " << context;
        }
      }
    }
}

}  // namespace
}  // namespace moxin
