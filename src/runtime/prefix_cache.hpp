// Reuse of KV blocks across requests that start with the same inputs (the same image and the
// same leading prompt tokens), at block granularity, as in vLLM's automatic prefix caching.
//
// Each full block of a sequence is named by a digest chain: key(i) = SHA-256(key(i-1), the
// block's inputs), key(-1) = SHA-256(the image's digest, or none). A block's key thus names
// everything before it too, so one lookup per block finds the longest cached prefix. The cache
// holds one reference on each block it knows; blocks no sequence uses are evicted least
// recently used first when the pool runs short.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "runtime/content_hash.hpp"
#include "runtime/kv_block_refs.hpp"
#include "runtime/prompt_layout.hpp"

namespace moxin {

// Keys of the sequence's first `blocks` full blocks.
std::vector<Digest> prefix_block_keys(const std::optional<Digest>& image,
                                      std::span<const PositionInput> inputs, int block_size,
                                      size_t blocks);

class PrefixCache {
 public:
  explicit PrefixCache(KvBlockRefs& refs) : refs_(refs) {}
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  // The cached blocks of the longest run of leading keys, each retained for the caller.
  std::vector<int32_t> acquire(std::span<const Digest> keys);
  // Offers a full, written block under its key; cached (one more reference) unless the key is
  // cached already.
  void insert(const Digest& key, int32_t block);
  // Evicts unused cached blocks, least recently used first, until the pool has `blocks` free.
  // False when even evicting every unused block is not enough.
  bool make_free(int blocks);
  // Cached blocks that only the cache holds (what make_free could free).
  int evictable() const;
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    int32_t block;
    std::list<Digest>::iterator recency;
  };
  KvBlockRefs& refs_;
  std::unordered_map<Digest, Entry, DigestHash> entries_;
  std::list<Digest> recency_;  // most recently used first
};

}  // namespace moxin
