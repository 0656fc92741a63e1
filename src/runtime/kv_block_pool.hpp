// Hands out the paged KV cache's physical blocks to sequences (block tables grow on demand,
// blocks return to the pool when a sequence ends).
#pragma once

#include <cstdint>
#include <vector>

namespace moxin {

class KvBlockPool {
 public:
  KvBlockPool(int num_blocks, int block_size);
  int block_size() const { return block_size_; }
  int free_blocks() const { return static_cast<int>(free_.size()); }
  int capacity_tokens() const { return num_blocks_ * block_size_; }

  // Grows `table` until it covers `tokens` positions. Throws moxin::Error when the pool is
  // exhausted (the table is left unchanged then).
  void reserve(std::vector<int32_t>& table, int64_t tokens);
  // Returns all of the table's blocks to the pool and clears it.
  void release(std::vector<int32_t>& table);

 private:
  int num_blocks_;
  int block_size_;
  std::vector<int32_t> free_;  // a stack: recently freed blocks are reused first (warm in cache)
};

}  // namespace moxin
