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
// replay() enqueues the whole graph on the backend's stream.
using CudaGraph = OpGraph;

// Records (does not run) the ops `record` issues on `backend`, which must be a CUDA backend.
// Inside `record`: no to_host_f32/synchronize/from_host_* (they synchronize or copy from host
// memory) and no prepare_linear/param/create_kv_cache. Tensors allocated by empty() inside it
// become graph allocations: free them inside it too. Paged attention sizes its split-K grid
// from AttentionBatch::max_context: capture with the largest context the graph will serve.
std::unique_ptr<CudaGraph> capture_cuda_graph(Backend& backend,
                                              const std::function<void()>& record);

// Which attention kernels run. Auto: decode batches (up to 64 tokens, or one token per sequence)
// go through split-K flash-decoding at f32 accuracy (K/V as stored: bf16), on tensor cores with q
// and p carried as bf16 pairs where the shape fits; larger batches (prefill) and the ViT
// encoders through tensor-core tiles, where Q and the softmax probabilities are rounded to
// bf16 (ViT: K and V too) for mma with f32 accumulation: ~2e-3 relative error, like the bf16
// activations of the prefill GEMMs. TiledF32 keeps those f32 on the CUDA cores (~10x slower);
// SplitK / TiledBf16 force one kernel. SplitKWarp forces split-K's register kernel with the
// splits merged through global memory, SplitKCluster with the splits of a (token, kv head) in one
// thread block cluster where they fit; both run as SplitK where the shape does not fit the
// register kernel. SplitKTensorCore forces split-K on tensor cores (Auto's choice for split-K
// where it fits), with the cluster merge, else as SplitKCluster. Tests and benchmarks use this;
// the runtime keeps Auto.
// Which kernel runs a bf16 linear of M activation rows. Auto: the CUDA-core GEMV (f32
// activations) for one row, the tensor-core skinny GEMM for 2..16 rows of small matrices,
// cuBLASLt otherwise (both round x to bf16); the GEMV also for up to 8 rows whose K is no
// multiple of 8. Gemv forces the GEMV for M <= 8, Skinny the skinny GEMM for M <= 64, Lt
// cuBLASLt for every M. Tests and benchmarks use this.
enum class CudaLinearPath { Auto, Gemv, Skinny, Lt };
void set_cuda_linear_path(Backend& backend, CudaLinearPath path);

// Whether decode linears take a layer's residual steps in (the norm before them, the add after
// them: Backend::fuses_rms_norm_into); on by default, MOXIN_CUDA_FUSE_RESIDUAL=0 starts it off.
// The results are the same bits either way; tests and benchmarks compare the two.
void set_cuda_fused_residual(Backend& backend, bool on);

// Whether a decode step's RoPE + K/V write run inside its attention kernel
// (Backend::rope_paged_attention); on by default, MOXIN_CUDA_FUSE_ROPE=0 starts it off. The same
// bits either way; tests and benchmarks compare the two.
void set_cuda_fused_rope(Backend& backend, bool on);

enum class CudaAttentionPath { Auto, SplitK, TiledF32, TiledBf16, SplitKWarp, SplitKCluster, SplitKTensorCore };
void set_cuda_attention_path(Backend& backend, CudaAttentionPath path);

}  // namespace moxin
