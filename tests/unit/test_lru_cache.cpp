// LruCache against a straightforward model of least-recently-used eviction (a recency list),
// over random find/insert sequences: same contents, same evictions, values never moved.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <list>
#include <random>

#include "runtime/lru_cache.hpp"

namespace moxin {
namespace {

TEST(LruCache, EvictsTheLeastRecentlyUsed) {
  const unsigned seed = std::random_device{}();
  std::printf("seed %u\n", seed);
  std::mt19937 rng(seed);
  for (int round = 0; round < 50; ++round) {
    const size_t capacity = 1 + rng() % 6;
    const int keys = 1 + static_cast<int>(rng() % 12);
    LruCache<int, int> cache(capacity);
    std::list<int> model;  // most recently used first
    for (int step = 0; step < 200; ++step) {
      const int key = static_cast<int>(rng() % static_cast<unsigned>(keys));
      int* found = cache.find(key);
      const auto it = std::find(model.begin(), model.end(), key);
      ASSERT_EQ(found != nullptr, it != model.end()) << "round " << round << " step " << step << " key " << key;
      if (found) {
        ASSERT_EQ(*found, key * 7) << "a stored value changed";
        model.erase(it);
      } else {
        ASSERT_EQ(cache.full(), model.size() == capacity);
        if (model.size() == capacity) model.pop_back();
        const int& stored = cache.insert(key, std::make_unique<int>(key * 7));
        ASSERT_EQ(stored, key * 7);
      }
      model.push_front(key);
      ASSERT_EQ(cache.size(), model.size());
    }
  }
}

TEST(LruCache, RefusesZeroCapacity) { EXPECT_THROW((LruCache<int, int>(0)), Error); }

}  // namespace
}  // namespace moxin
