// Captured decode steps (CUDA graphs): one token for each of B sequences, embedding through
// logits, replayed with one launch instead of hundreds. One graph per (batch size, context
// bucket), at most kMaxGraphs of them (each holds device memory for its activations and logits;
// the least recently used goes first); inputs (token ids, positions, block tables) live in tensors the graph was recorded
// with and are rewritten before each replay. On backends without graphs, run() declines.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "model/decoder.hpp"
#include "runtime/lru_cache.hpp"

namespace moxin {

class DecodeGraphs {
 public:
  // max_blocks: block-table width, enough for the whole KV pool (one sequence may use it all).
  DecodeGraphs(Backend& backend, const Decoder& decoder, KvCache& cache, int block_size, int max_blocks);
  ~DecodeGraphs();

  // tokens[i] is the new token of the sequence with `positions[i]` cached positions and block
  // table `tables[i]` (already covering that position). Returns logits [B, vocab], valid until
  // the next run(); nullopt when the backend cannot capture graphs.
  static constexpr size_t kMaxGraphs = 48;

  std::optional<Tensor> run(std::span<const int32_t> tokens, std::span<const int32_t> positions,
                            std::span<const std::vector<int32_t>* const> tables);

 private:
  struct Graph;
  Graph* graph_for(int batch, int context_bucket);  // nullptr: the backend cannot capture

  Backend& backend_;
  const Decoder& decoder_;
  KvCache& cache_;
  int block_size_;
  int max_blocks_;
  bool supported_ = true;
  LruCache<std::pair<int, int>, Graph> graphs_;  // by (batch, context bucket), kMaxGraphs of them
};

}  // namespace moxin
