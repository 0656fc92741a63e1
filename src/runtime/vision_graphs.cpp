#include "runtime/vision_graphs.hpp"

namespace moxin {

struct VisionGraphs::Graph {
  Tensor dino_in, siglip_in;
  ImageFeatures out;
  std::unique_ptr<OpGraph> graph;
};

VisionGraphs::VisionGraphs(Backend& backend, const Vlm& model)
    : backend_(backend), model_(model), graphs_(kMaxGraphs) {}

VisionGraphs::~VisionGraphs() = default;

VisionGraphs::Graph* VisionGraphs::graph_for(const Tensor& dino, int batch) {
  if (Graph* g = graphs_.find(batch)) return g;
  if (graphs_.full()) backend_.synchronize();  // the evicted graph's last replay must be over
  auto g = std::make_unique<Graph>();
  g->dino_in = backend_.empty(dino.shape, dino.dtype);
  g->siglip_in = backend_.empty(dino.shape, dino.dtype);
  // The outputs' shapes: one eager encoding of the (not yet written) inputs would cost what the
  // graph saves, so they come from the model's configuration.
  const int64_t rows = static_cast<int64_t>(batch) * model_.config().dino.num_patches;
  g->out.dino = backend_.empty_act({rows, model_.config().dino.dim});
  g->out.siglip = backend_.empty_act({rows, model_.config().siglip.dim});
  g->out.projected = backend_.empty_act({rows, model_.config().decoder.hidden});
  Graph& graph = *g;
  g->graph = backend_.capture([&] {
    const ImageFeatures f = model_.encode_images(graph.dino_in, graph.siglip_in, batch);
    backend_.copy_rows(f.dino, graph.out.dino, 0);
    backend_.copy_rows(f.siglip, graph.out.siglip, 0);
    backend_.copy_rows(f.projected, graph.out.projected, 0);
  });
  if (!g->graph) {
    supported_ = false;
    return nullptr;
  }
  return &graphs_.insert(batch, std::move(g));
}

std::optional<ImageFeatures> VisionGraphs::run(const Tensor& dino, const Tensor& siglip, int batch) {
  if (!supported_) return std::nullopt;
  Graph* g = graph_for(dino, batch);
  if (!g) return std::nullopt;
  backend_.copy_rows(dino, g->dino_in, 0);
  backend_.copy_rows(siglip, g->siglip_in, 0);
  g->graph->replay();
  return g->out;
}

}  // namespace moxin
