// Reference counts over the KvBlockPool's blocks, so that one physical block can sit in
// several block tables at once: a sequence and the prefix cache, or two sequences that share a
// cached prompt prefix. A block goes back to the pool when its last holder lets go. The pool
// itself is unchanged (and Engine::step still grows tables through it); only code that shares
// blocks goes through this class, and it must never hand such tables to Engine::release.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "runtime/kv_block_pool.hpp"

namespace moxin {

class KvBlockRefs {
 public:
  explicit KvBlockRefs(KvBlockPool& pool);

  int block_size() const { return pool_.block_size(); }
  int free_blocks() const { return pool_.free_blocks(); }
  int total_blocks() const { return static_cast<int>(refs_.size()); }
  int references(int32_t block) const { return refs_.at(static_cast<size_t>(block)); }
  // Blocks `table` lacks to cover `tokens` positions.
  int missing_blocks(const std::vector<int32_t>& table, int64_t tokens) const;

  // Grows `table` with fresh blocks (one reference each) until it covers `tokens` positions.
  // Throws moxin::Error when the pool has too few free blocks (the table is unchanged then).
  void grow(std::vector<int32_t>& table, int64_t tokens);
  void retain(int32_t block);
  void release(int32_t block);
  // Drops one reference per block of the table and clears it.
  void release(std::vector<int32_t>& table);

 private:
  KvBlockPool& pool_;
  std::vector<int> refs_;  // by block id
};

}  // namespace moxin
