// The server's cache building blocks: SHA-256 against the FIPS 180-2 example digests (and its
// streaming against one-shot on random splits), reference-counted KV blocks, and the prefix
// cache's matching, sharing and least-recently-used eviction.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "moxin/error.hpp"
#include "runtime/content_hash.hpp"
#include "runtime/kv_block_pool.hpp"
#include "runtime/kv_block_refs.hpp"
#include "runtime/prefix_cache.hpp"

namespace moxin {
namespace {

std::span<const uint8_t> bytes_of(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

uint64_t fresh_seed(const char* test) {
  const uint64_t seed = std::random_device{}();
  std::printf("[seed] %s: %llu\n", test, static_cast<unsigned long long>(seed));
  return seed;
}

TEST(Sha256, PublishedExamples) {
  // FIPS 180-2 appendix B (and the empty message).
  EXPECT_EQ(to_hex(sha256(bytes_of(""))), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(to_hex(sha256(bytes_of("abc"))), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(to_hex(sha256(bytes_of("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"))),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  Sha256 million;
  const std::string chunk(1000, 'a');
  for (int i = 0; i < 1000; ++i) million.update(bytes_of(chunk));
  EXPECT_EQ(to_hex(million.finish()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, StreamingEqualsOneShotAtEveryPaddingBoundary) {
  std::mt19937_64 rng(fresh_seed("Sha256.Streaming"));
  for (size_t length : {0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 1000}) {
    std::vector<uint8_t> data(length);
    for (auto& b : data) b = static_cast<uint8_t>(rng());
    Sha256 h;
    for (size_t at = 0; at < length;) {
      const size_t take = std::min<size_t>(length - at, rng() % 70);
      h.update(std::span<const uint8_t>(data).subspan(at, take));
      at += take;
    }
    EXPECT_EQ(h.finish(), sha256(data)) << length;
  }
}

TEST(KvBlockRefs, SharedBlocksReturnWhenTheLastHolderLetsGo) {
  KvBlockPool pool(8, 16);
  KvBlockRefs refs(pool);
  std::vector<int32_t> a, b;
  refs.grow(a, 40);  // 3 blocks
  EXPECT_EQ(a.size(), 3u);
  EXPECT_EQ(refs.free_blocks(), 5);
  EXPECT_EQ(refs.missing_blocks(a, 49), 1);
  for (int32_t block : {a[0], a[1]}) {
    refs.retain(block);
    b.push_back(block);
  }
  refs.release(a);
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(refs.free_blocks(), 6);  // the two shared blocks are still held by b
  refs.release(b);
  EXPECT_EQ(refs.free_blocks(), 8);
  EXPECT_THROW(refs.release(0), Error);
  std::vector<int32_t> too_big;
  EXPECT_THROW(refs.grow(too_big, 9 * 16), Error);
  EXPECT_TRUE(too_big.empty());
}

std::vector<PositionInput> tokens(std::initializer_list<int32_t> ids) {
  std::vector<PositionInput> out;
  for (int32_t id : ids) out.push_back({id, -1});
  return out;
}

TEST(PrefixCache, KeysNameTheWholePrefixAndTheImage) {
  const auto a = tokens({1, 2, 3, 4, 5, 6, 7, 8});
  auto b = a;
  b[1].token = 9;  // differs in the first block only
  const Digest image = sha256(bytes_of("image"));
  const auto ka = prefix_block_keys(std::nullopt, a, 4, SIZE_MAX);
  const auto kb = prefix_block_keys(std::nullopt, b, 4, SIZE_MAX);
  ASSERT_EQ(ka.size(), 2u);
  EXPECT_NE(ka[0], kb[0]);
  EXPECT_NE(ka[1], kb[1]);  // same tokens in block 1, but a different prefix
  EXPECT_NE(prefix_block_keys(image, a, 4, SIZE_MAX)[0], ka[0]);
  EXPECT_EQ(prefix_block_keys(std::nullopt, tokens({1, 2, 3, 4, 5, 6, 7, 8, 9}), 4, SIZE_MAX), ka);  // full blocks only
  auto rows = a;
  rows[2] = {0, 2};  // an image row instead of a token
  EXPECT_NE(prefix_block_keys(image, rows, 4, SIZE_MAX)[0], prefix_block_keys(image, a, 4, SIZE_MAX)[0]);
}

TEST(PrefixCache, MatchesSharesAndEvictsOnlyUnusedBlocks) {
  KvBlockPool pool(6, 4);
  KvBlockRefs refs(pool);
  PrefixCache cache(refs);
  const auto keys = prefix_block_keys(std::nullopt, tokens({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}), 4, SIZE_MAX);

  std::vector<int32_t> first;
  refs.grow(first, 12);
  for (size_t i = 0; i < 3; ++i) cache.insert(keys[i], first[i]);
  EXPECT_EQ(cache.size(), 3u);
  EXPECT_EQ(cache.evictable(), 0);  // the sequence still holds them

  // A second sequence with the same first two blocks shares them.
  const auto other = prefix_block_keys(std::nullopt, tokens({1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0}), 4, SIZE_MAX);
  std::vector<int32_t> second = cache.acquire(other);
  ASSERT_EQ(second.size(), 2u);
  EXPECT_EQ(second[0], first[0]);
  EXPECT_EQ(refs.references(first[0]), 3);

  refs.release(first);
  EXPECT_EQ(cache.evictable(), 1);  // block 2: only the cache; blocks 0-1: the cache and `second`
  EXPECT_EQ(refs.free_blocks(), 3);
  EXPECT_TRUE(cache.make_free(4));
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_FALSE(cache.make_free(5));  // the shared blocks cannot go
  refs.release(second);
  EXPECT_TRUE(cache.make_free(6));
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_TRUE(cache.acquire(keys).empty());
}

}  // namespace
}  // namespace moxin
