#include "runtime/decode_graphs.hpp"

#include <algorithm>

#include "core/check.hpp"

namespace moxin {

struct DecodeGraphs::Graph {
  Tensor ids, token_seq, positions, tables, rows, logits;
  std::unique_ptr<OpGraph> graph;
};

namespace {

// Overwrites an I32 tensor's contents in place (the graph keeps its address).
void write_i32(Backend& backend, Tensor& dst, const int32_t* src) {
  backend.copy_rows(backend.from_host_i32(src, dst.shape), dst, 0);
}

// Split-K attention sizes its grid by the context the graph was captured for: buckets keep
// short contexts from paying for the longest one.
int context_bucket(int context, int capacity) {
  int bucket = 256;
  while (bucket < context) bucket *= 2;
  return std::min(bucket, capacity);
}

}  // namespace

DecodeGraphs::DecodeGraphs(Backend& backend, const Decoder& decoder, KvCache& cache, int block_size,
                           int max_blocks)
    : backend_(backend),
      decoder_(decoder),
      cache_(cache),
      block_size_(block_size),
      max_blocks_(max_blocks),
      graphs_(kMaxGraphs) {}

DecodeGraphs::~DecodeGraphs() = default;

DecodeGraphs::Graph* DecodeGraphs::graph_for(int batch, int bucket) {
  if (Graph* g = graphs_.find({batch, bucket})) return g;
  // Making room destroys a graph: let its last replay finish first.
  if (graphs_.full()) backend_.synchronize();
  auto g = std::make_unique<Graph>();
  g->ids = backend_.empty({batch}, DType::I32);
  g->token_seq = backend_.empty({batch}, DType::I32);
  g->positions = backend_.empty({batch}, DType::I32);
  g->tables = backend_.empty({batch, max_blocks_}, DType::I32);
  g->rows = backend_.empty({batch}, DType::I32);
  g->logits = backend_.empty_act({batch, decoder_.config().vocab});
  std::vector<int32_t> iota(static_cast<size_t>(batch));
  for (int i = 0; i < batch; ++i) iota[static_cast<size_t>(i)] = i;
  write_i32(backend_, g->token_seq, iota.data());  // token i belongs to sequence i ...
  write_i32(backend_, g->rows, iota.data());       // ... and its logits are row i
  backend_.synchronize();

  AttentionBatch attention{g->token_seq, g->positions, g->tables, bucket};
  Graph& graph = *g;
  g->graph = backend_.capture([&] {
    Tensor x = decoder_.embed(graph.ids);
    decoder_.forward(x, graph.positions, attention, cache_);
    backend_.copy_rows(decoder_.logits(x, graph.rows), graph.logits, 0);
  });
  if (!g->graph) {
    supported_ = false;
    return nullptr;
  }
  return &graphs_.insert({batch, bucket}, std::move(g));
}

std::optional<Tensor> DecodeGraphs::run(std::span<const int32_t> tokens, std::span<const int32_t> positions,
                                        std::span<const std::vector<int32_t>* const> tables) {
  if (!supported_) return std::nullopt;
  const int batch = static_cast<int>(tokens.size());
  MOXIN_CHECK(batch > 0 && positions.size() == tokens.size() && tables.size() == tokens.size(),
              "[decode] mismatched batch: ", tokens.size(), " tokens, ", positions.size(), " positions, ",
              tables.size(), " block tables");
  const int capacity = max_blocks_ * block_size_;
  const int context = *std::max_element(positions.begin(), positions.end()) + 1;
  const int bucket = context_bucket(context, capacity);
  Graph* found = graph_for(batch, bucket);
  if (!found) return std::nullopt;
  Graph& g = *found;

  std::vector<int32_t> flat(static_cast<size_t>(batch) * max_blocks_, 0);
  for (int i = 0; i < batch; ++i) {
    const auto& t = *tables[static_cast<size_t>(i)];
    MOXIN_CHECK(static_cast<int>(t.size()) <= max_blocks_, "[decode] block table of ", t.size(),
                " blocks exceeds the pool's ", max_blocks_);
    std::copy(t.begin(), t.end(), flat.begin() + static_cast<ptrdiff_t>(i) * max_blocks_);
  }
  write_i32(backend_, g.ids, tokens.data());
  write_i32(backend_, g.positions, positions.data());
  write_i32(backend_, g.tables, flat.data());
  g.graph->replay();
  return g.logits;
}

}  // namespace moxin
