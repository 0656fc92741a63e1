#include "runtime/kv_block_refs.hpp"

#include <algorithm>

#include "core/check.hpp"

namespace moxin {

KvBlockRefs::KvBlockRefs(KvBlockPool& pool)
    : pool_(pool), refs_(static_cast<size_t>(pool.capacity_tokens() / pool.block_size()), 0) {
  MOXIN_CHECK(pool.free_blocks() == total_blocks(), "[kv] block references must start on an unused pool (",
              pool.free_blocks(), " of ", total_blocks(), " blocks free)");
}

int KvBlockRefs::missing_blocks(const std::vector<int32_t>& table, int64_t tokens) const {
  const int64_t needed = (tokens + block_size() - 1) / block_size();
  return static_cast<int>(std::max<int64_t>(0, needed - static_cast<int64_t>(table.size())));
}

void KvBlockRefs::grow(std::vector<int32_t>& table, int64_t tokens) {
  const size_t before = table.size();
  pool_.reserve(table, tokens);
  for (size_t i = before; i < table.size(); ++i) refs_[static_cast<size_t>(table[i])] = 1;
}

void KvBlockRefs::retain(int32_t block) {
  int& refs = refs_.at(static_cast<size_t>(block));
  MOXIN_CHECK(refs > 0, "[kv] retain of block ", block, ", which nobody holds");
  ++refs;
}

void KvBlockRefs::release(int32_t block) {
  int& refs = refs_.at(static_cast<size_t>(block));
  MOXIN_CHECK(refs > 0, "[kv] release of block ", block, ", which nobody holds");
  if (--refs == 0) {
    std::vector<int32_t> freed{block};
    pool_.release(freed);
  }
}

void KvBlockRefs::release(std::vector<int32_t>& table) {
  for (int32_t block : table) release(block);
  table.clear();
}

}  // namespace moxin
