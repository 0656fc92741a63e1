#include "runtime/decode_graphs.hpp"

#include <algorithm>

#include "core/check.hpp"

namespace moxin {

// inputs holds, for the bucket's B rows: token ids [B], drawn-token sources [B] (-1: the id),
// positions [B], block tables [B, width] (width: blocks of the context bucket); ids, sources,
// positions and tables are views of it.
struct DecodeGraphs::Graph {
  static constexpr int kRowsBeforeTables = 3;
  int width = 0;
  Tensor inputs, ids, sources, positions, tables, token_seq, rows, logits;
  std::unique_ptr<OpGraph> graph;
};

// Split-K attention sizes its grid by the context the graph was captured for (CUDA: up to one
// block per SM for each (token, kv head), none shorter than 128 positions), and a context shorter
// than the bucket leaves the surplus blocks empty but launched: a batch-1 step at a 1k context ran
// 1.2% slower in the 2048 bucket (16 splits, 9 used) than in the 1024 one (H100, session 20).
// Batches of up to kFineContextBatch sequences, whose split count follows the context, take
// quarter-octave buckets (1024, 1280, 1536, 1792, 2048, ...); larger ones fill the GPU with one
// split per (token, kv head) at these contexts and keep powers of two (fewer graphs to capture).
int DecodeGraphs::context_bucket(int batch, int context, int capacity) {
  int bucket = 256;
  while (bucket < context) bucket *= 2;
  if (batch <= kFineContextBatch && bucket > 256) {
    const int quarter = bucket / 8;  // a quarter of the octave (bucket / 2, bucket]
    bucket = bucket / 2 + (context - bucket / 2 + quarter - 1) / quarter * quarter;
  }
  return std::min(bucket, capacity);
}

int DecodeGraphs::batch_bucket(int batch) {
  if (batch <= 4) return std::max(batch, 1);
  int bucket = 4;  // then 6, 8, 12, 16, 24, 32, ...: at most a third of a bucket is padding
  while (bucket < batch) bucket = bucket % 3 == 0 ? bucket / 3 * 4 : bucket / 2 * 3;
  return bucket;
}

DecodeGraphs::DecodeGraphs(Backend& backend, const Decoder& decoder, KvCache& cache, int block_size,
                           int max_blocks, Tensor drawn)
    : backend_(backend),
      decoder_(decoder),
      cache_(cache),
      block_size_(block_size),
      max_blocks_(max_blocks),
      drawn_(std::move(drawn)),
      graphs_(kMaxGraphs) {}

DecodeGraphs::~DecodeGraphs() = default;

DecodeGraphs::Graph* DecodeGraphs::graph_for(int batch, int bucket) {
  if (Graph* g = graphs_.find({batch, bucket})) return g;
  // Making room destroys a graph: let its last replay finish first.
  if (graphs_.full()) backend_.synchronize();
  auto g = std::make_unique<Graph>();
  g->width = std::min(max_blocks_, (bucket + block_size_ - 1) / block_size_);
  g->inputs = backend_.empty({Graph::kRowsBeforeTables + g->width, batch}, DType::I32);
  g->ids = g->inputs.rows_view(0, 1).reshaped({batch});
  g->sources = g->inputs.rows_view(1, 1).reshaped({batch});
  g->positions = g->inputs.rows_view(2, 1).reshaped({batch});
  g->tables = g->inputs.rows_view(Graph::kRowsBeforeTables, g->width).reshaped({batch, g->width});
  std::vector<int32_t> iota(static_cast<size_t>(batch));
  for (int i = 0; i < batch; ++i) iota[static_cast<size_t>(i)] = i;
  g->token_seq = backend_.from_host_i32(iota.data(), {batch});  // token i belongs to sequence i ...
  g->rows = backend_.from_host_i32(iota.data(), {batch});       // ... and its logits are row i
  g->logits = backend_.empty_act({batch, decoder_.config().vocab});
  backend_.synchronize();

  AttentionBatch attention{g->token_seq, g->positions, g->tables, bucket, true};
  Graph& graph = *g;
  g->graph = backend_.capture([&] {
    Tensor x = decoder_.embed(graph.ids, {&graph.sources, &drawn_});
    decoder_.forward(x, graph.positions, attention, cache_);
    backend_.copy_rows(decoder_.logits(x, graph.rows), graph.logits, 0);
  });
  if (!g->graph) {
    supported_ = false;
    return nullptr;
  }
  return &graphs_.insert({batch, bucket}, std::move(g));
}

std::optional<Tensor> DecodeGraphs::run(std::span<const int32_t> tokens, std::span<const int32_t> sources,
                                        std::span<const int32_t> positions,
                                        std::span<const std::vector<int32_t>* const> tables) {
  if (!supported_) return std::nullopt;
  const int batch = static_cast<int>(tokens.size());
  MOXIN_CHECK(batch > 0 && positions.size() == tokens.size() && tables.size() == tokens.size() &&
                  (sources.empty() || sources.size() == tokens.size()),
              "[decode] mismatched batch: ", tokens.size(), " tokens, ", sources.size(), " drawn-token sources, ",
              positions.size(), " positions, ", tables.size(), " block tables");
  const int capacity = max_blocks_ * block_size_;
  const int context = *std::max_element(positions.begin(), positions.end()) + 1;
  const int padded = batch_bucket(batch);
  const int bucket = context_bucket(padded, context, capacity);
  Graph* found = graph_for(padded, bucket);
  if (!found) return std::nullopt;
  Graph& g = *found;

  // Padding rows: token 0, no drawn source, at position 0 with no KV block (-1: neither written
  // nor read).
  const size_t b = static_cast<size_t>(padded);
  constexpr size_t kTables = Graph::kRowsBeforeTables;
  std::vector<int32_t> flat((kTables + static_cast<size_t>(g.width)) * b, 0);
  std::fill(flat.begin() + static_cast<ptrdiff_t>(b), flat.begin() + static_cast<ptrdiff_t>(2 * b), -1);
  std::fill(flat.begin() + static_cast<ptrdiff_t>(kTables * b), flat.end(), -1);
  std::copy(tokens.begin(), tokens.end(), flat.begin());
  std::copy(sources.begin(), sources.end(), flat.begin() + static_cast<ptrdiff_t>(b));
  std::copy(positions.begin(), positions.end(), flat.begin() + static_cast<ptrdiff_t>(2 * b));
  for (int i = 0; i < batch; ++i) {
    // Positions below `context` <= bucket need only the table's first `width` blocks.
    const auto& t = *tables[static_cast<size_t>(i)];
    const size_t used = std::min(t.size(), static_cast<size_t>(g.width));
    MOXIN_CHECK(positions[static_cast<size_t>(i)] / block_size_ < static_cast<int>(used),
                "[decode] the block table of sequence ", i, " does not cover position ",
                positions[static_cast<size_t>(i)]);
    std::copy_n(t.begin(), used,
                flat.begin() + static_cast<ptrdiff_t>(kTables * b + static_cast<size_t>(i) * g.width));
  }
  backend_.upload_i32(flat.data(), g.inputs);
  g.graph->replay();
  return g.logits.rows_view(0, batch);
}

}  // namespace moxin
