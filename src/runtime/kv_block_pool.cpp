#include "runtime/kv_block_pool.hpp"

#include "core/check.hpp"

namespace moxin {

KvBlockPool::KvBlockPool(int num_blocks, int block_size)
    : num_blocks_(num_blocks), block_size_(block_size) {
  MOXIN_CHECK(num_blocks > 0 && block_size > 0, "[kv] invalid pool of ", num_blocks, " blocks of ",
              block_size, " tokens");
  free_.reserve(static_cast<size_t>(num_blocks));
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

void KvBlockPool::reserve(std::vector<int32_t>& table, int64_t tokens) {
  const int64_t needed = (tokens + block_size_ - 1) / block_size_;
  const int64_t missing = needed - static_cast<int64_t>(table.size());
  if (missing <= 0) return;
  MOXIN_CHECK(missing <= static_cast<int64_t>(free_.size()), "[kv] the KV cache is full: ",
              tokens, " positions need ", missing, " more blocks but only ", free_.size(),
              " of ", num_blocks_, " are free (raise --max-context)");
  for (int64_t i = 0; i < missing; ++i) {
    table.push_back(free_.back());
    free_.pop_back();
  }
}

void KvBlockPool::release(std::vector<int32_t>& table) {
  for (int32_t b : table) free_.push_back(b);
  table.clear();
}

}  // namespace moxin
