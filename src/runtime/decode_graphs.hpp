// Captured decode steps (CUDA graphs): one token for each of B sequences, embedding through
// logits, replayed with one launch instead of hundreds. One graph per (batch bucket, context
// bucket), at most kMaxGraphs of them (each holds device memory for its activations and logits;
// the least recently used goes first). A batch runs in the graph of the smallest bucket that
// holds it (1, 2, 3, 4, 6, 8, 12, 16, 24, ... 256): a server whose batch size changes every few
// steps replays a handful of graphs instead of capturing one per size, and the padding rows
// (position 0, no KV block: nothing written, nothing read) cost next to nothing in a step that
// streams the weights anyway. Inputs (token ids, drawn-token sources, positions, block tables)
// live in one tensor the graph was recorded with and are rewritten by one upload before each
// replay; a row whose token a sampler drew into `drawn` at the previous step (DrawnTokens) reads
// it there, so a step can be replayed before the host has read the last one's tokens. On
// backends without graphs, run() declines.
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
  // max_blocks: the KV pool's blocks (no block table is wider); drawn: the I32 tensor a sampler
  // writes a step's tokens into (Engine::drawn_tokens), which the graphs read from.
  DecodeGraphs(Backend& backend, const Decoder& decoder, KvCache& cache, int block_size, int max_blocks,
               Tensor drawn);
  ~DecodeGraphs();

  // tokens[i] is the new token of the sequence with `positions[i]` cached positions and block
  // table `tables[i]` (already covering that position), or drawn[sources[i]] where sources is
  // given and sources[i] >= 0. Returns logits [B, vocab], valid until the next run(); nullopt
  // when the backend cannot capture graphs.
  static constexpr size_t kMaxGraphs = 48;
  // The batch size a batch of `batch` sequences is padded to (the graph it replays).
  static int batch_bucket(int batch);
  // The max_context a graph for `batch` (padded) sequences whose longest context is `context`
  // is captured with: powers of two from 256, quarter octaves for batches up to
  // kFineContextBatch; never above `capacity` (the KV pool's positions).
  static constexpr int kFineContextBatch = 2;
  static int context_bucket(int batch, int context, int capacity);

  std::optional<Tensor> run(std::span<const int32_t> tokens, std::span<const int32_t> sources,
                            std::span<const int32_t> positions, std::span<const std::vector<int32_t>* const> tables);

 private:
  struct Graph;
  Graph* graph_for(int batch, int context_bucket);  // nullptr: the backend cannot capture

  Backend& backend_;
  const Decoder& decoder_;
  KvCache& cache_;
  int block_size_;
  int max_blocks_;
  Tensor drawn_;
  bool supported_ = true;
  LruCache<std::pair<int, int>, Graph> graphs_;  // by (batch, context bucket), kMaxGraphs of them
};

}  // namespace moxin
