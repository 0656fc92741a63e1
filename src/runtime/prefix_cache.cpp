#include "runtime/prefix_cache.hpp"

#include <algorithm>
#include <array>

namespace moxin {

std::vector<Digest> prefix_block_keys(const std::optional<Digest>& image,
                                      std::span<const PositionInput> inputs, int block_size,
                                      size_t blocks) {
  blocks = std::min(blocks, inputs.size() / static_cast<size_t>(block_size));
  static constexpr uint8_t kNoImage[] = {'n', 'o', ' ', 'i', 'm', 'a', 'g', 'e'};
  Digest key = image ? Sha256().update(*image).finish() : sha256(kNoImage);
  std::vector<Digest> keys;
  keys.reserve(blocks);
  for (size_t b = 0; b < blocks; ++b) {
    Sha256 h;
    h.update(key);
    for (size_t i = b * block_size; i < (b + 1) * block_size; ++i) {
      std::array<uint8_t, 8> bytes;
      const uint32_t token = static_cast<uint32_t>(inputs[i].token);
      const uint32_t row = static_cast<uint32_t>(inputs[i].image_row);
      for (int k = 0; k < 4; ++k) {
        bytes[static_cast<size_t>(k)] = static_cast<uint8_t>(token >> (8 * k));
        bytes[static_cast<size_t>(4 + k)] = static_cast<uint8_t>(row >> (8 * k));
      }
      h.update(bytes);
    }
    key = h.finish();
    keys.push_back(key);
  }
  return keys;
}

std::vector<int32_t> PrefixCache::acquire(std::span<const Digest> keys) {
  std::vector<int32_t> blocks;
  for (const Digest& key : keys) {
    auto it = entries_.find(key);
    if (it == entries_.end()) break;
    blocks.push_back(it->second.block);
  }
  // Touched deepest first, so the chain's head ends most recent: eviction then takes tails
  // before heads (a block whose head is gone can never match again; it only ages out).
  for (size_t i = blocks.size(); i-- > 0;) {
    Entry& entry = entries_.at(keys[i]);
    recency_.splice(recency_.begin(), recency_, entry.recency);
    refs_.retain(entry.block);
  }
  return blocks;
}

void PrefixCache::insert(const Digest& key, int32_t block) {
  if (entries_.count(key)) return;
  refs_.retain(block);
  recency_.push_front(key);
  entries_.emplace(key, Entry{block, recency_.begin()});
}

bool PrefixCache::make_free(int blocks) {
  if (refs_.free_blocks() >= blocks) return true;
  if (refs_.free_blocks() + evictable() < blocks) return false;
  for (auto it = recency_.end(); it != recency_.begin() && refs_.free_blocks() < blocks;) {
    --it;
    auto entry = entries_.find(*it);
    if (refs_.references(entry->second.block) != 1) continue;  // a sequence still uses it
    refs_.release(entry->second.block);
    entries_.erase(entry);
    it = recency_.erase(it);
  }
  return refs_.free_blocks() >= blocks;
}

int PrefixCache::evictable() const {
  int count = 0;
  for (const auto& [key, entry] : entries_) count += refs_.references(entry.block) == 1;
  return count;
}

}  // namespace moxin
