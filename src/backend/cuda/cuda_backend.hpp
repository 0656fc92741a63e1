// The CUDA backend (NVIDIA GPUs, built for Hopper sm_90a): f32 activations between ops, bf16
// weights and KV cache on the device, every op asynchronous on one stream owned by the backend.
// This header is plain C++ (no CUDA types) so the model and runtime can use it anywhere.
#pragma once

#include <functional>
#include <memory>

#include "backend/backend.hpp"

namespace moxin {

// Throws moxin::Error when no usable GPU is present.
std::unique_ptr<Backend> create_cuda_backend(int device_ordinal);

// A recorded sequence of ops (e.g. one decode step) replayed with one launch. The graph bakes
// in the addresses of every tensor its ops touched: keep them alive and update their contents
// (token ids, positions, block tables) in place between replays.
class CudaGraph {
 public:
  virtual ~CudaGraph() = default;
  virtual void replay() = 0;  // enqueues the whole graph on the backend's stream; asynchronous
};

// Records (does not run) the ops `record` issues on `backend`, which must be a CUDA backend.
// Inside `record`: no to_host_f32/synchronize/from_host_* (they synchronize or copy from host
// memory) and no prepare_linear/param/create_kv_cache. Tensors allocated by empty() inside it
// become graph allocations: free them inside it too. Paged attention sizes its split-K grid
// from AttentionBatch::max_context: capture with the largest context the graph will serve.
std::unique_ptr<CudaGraph> capture_cuda_graph(Backend& backend, const std::function<void()>& record);

// Which paged-attention kernel serves a batch: Auto picks split-K (flash-decoding) for small
// token counts and the tiled prefill kernel otherwise; tests and benchmarks force one.
enum class CudaAttentionPath { Auto, SplitK, Tiled };
void set_cuda_attention_path(Backend& backend, CudaAttentionPath path);

}  // namespace moxin
