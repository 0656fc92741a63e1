// The ops interface the model is written against (docs/architecture.md, layer 4). The model
// composes these calls and never sees a kernel; `backend/cpu` and `backend/cuda` implement
// them and may fuse inside an op.
//
// Conventions: activations are [rows, cols] tensors of act_dtype(); index tensors are I32;
// outputs are preallocated by the caller (so a CUDA decode step allocates nothing and can
// be captured in a graph); ops are asynchronous on CUDA until to_host()/synchronize().
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/tensor.hpp"
#include "io/checkpoint.hpp"

namespace moxin {

// What a backend keeps behind a prepared Linear: each backend derives its own type and checks
// it when an op receives one, so a weight prepared by another backend is refused, not misread.
struct LinearImpl {
  virtual ~LinearImpl() = default;
};

// A weight matrix [out, in] (+ optional bias) prepared for one backend: the CPU keeps a
// pointer into the mmap'd file, CUDA a device copy. Quantized forms hide behind `impl`.
struct Linear {
  int64_t out_features = 0;
  int64_t in_features = 0;
  std::shared_ptr<const LinearImpl> impl;
};

// Auto: the backend's own precision (f32 on the CPU, bf16 on CUDA). Fp8E4M3: E4M3 codes with
// one power-of-two scale per row of head_dim (src/core/fp8_kv.hpp), half of bf16's bytes.
enum class KvCacheDType { Auto, Fp8E4M3 };

struct KvCacheConfig {
  int layers = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int block_size = 16;  // tokens per block
  int num_blocks = 0;   // physical blocks shared by all sequences
  KvCacheDType dtype = KvCacheDType::Auto;
};

// Paged KV cache: per layer, K and V of num_blocks blocks of block_size positions x kv_heads
// rows of head_dim (the order within a block is the backend's), each element of `element`
// type (F32, BF16 or F8_E4M3; an FP8 cache adds one exponent byte per row of head_dim).
class KvCache {
 public:
  virtual ~KvCache() = default;
  const KvCacheConfig& config() const { return config_; }
  DType element() const { return element_; }
  // Bytes one token of one sequence occupies over all layers (K and V): what a decode step reads
  // per cached position.
  double bytes_per_token() const {
    const double row_bytes = static_cast<double>(config_.head_dim) * static_cast<double>(dtype_size(element_)) +
                             (element_ == DType::F8_E4M3 ? 1.0 : 0.0);
    return 2.0 * config_.layers * config_.kv_heads * row_bytes;
  }

 protected:
  KvCache(KvCacheConfig c, DType element) : config_(c), element_(element) {}
  KvCacheConfig config_;
  DType element_;
};

// Describes, for a batch of T tokens from S sequences, where each token sits. All three are
// I32 device tensors so a captured decode step reads them from memory.
struct AttentionBatch {
  Tensor token_seq;     // [T] index into block_tables' rows
  Tensor token_pos;     // [T] position of the token in its sequence (attends to 0..pos)
  Tensor block_tables;  // [S, max_blocks] physical block ids, row per sequence
  int max_context = 0;  // upper bound of pos + 1 over the batch (sizes split-K work)
  // True only where no two tokens share a sequence (a decode step: token t is its sequence's only
  // one here), so a token's new K/V row is read by that token's attention alone; lets a backend
  // write it inside the attention (Backend::rope_paged_attention). False is always safe.
  bool one_token_per_sequence = false;
};

// One row of Backend::sample_tokens: the host sampler's parameters (runtime/sampler.hpp, whose
// rules a device sampler follows) and the uniform number in [0, 1) the host drew for the step.
struct TokenDraw {
  float temperature = 0.0f;  // 0: greedy
  int top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  double uniform = 0.0;
  std::vector<int32_t> penalized;  // distinct ids in [0, vocab) the penalty applies to
};

// Token ids a sampler drew into a backend tensor (Backend::sample_tokens) that the host has
// not read yet, as inputs of the next step (the scheduler issues a decode step before it reads
// the last one's tokens): row t of an embedding takes drawn[sources[t]] where sources[t] >= 0,
// else ids[t]. Empty (both null): every row takes ids[t].
struct DrawnTokens {
  const Tensor* sources = nullptr;  // I32 [T]
  const Tensor* drawn = nullptr;    // I32 [rows of the sampled step]
};

// A copy of I32 values to the host that is collected later (Backend::read_i32_async).
class I32Readback {
 public:
  virtual ~I32Readback() = default;
  // Waits for the copy, and so for every op issued before it, and gives the values.
  virtual std::span<const int32_t> wait() = 0;
};

// A recorded sequence of ops that replays with one launch (a CUDA graph): the decode step.
class OpGraph {
 public:
  virtual ~OpGraph() = default;
  virtual void replay() = 0;  // asynchronous, like any op
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual DeviceKind kind() const = 0;
  virtual std::string name() const = 0;
  virtual DType act_dtype() const = 0;
  // Whether prepare_linear/param copy the weights into the backend's own memory (a GPU), so the
  // mapped checkpoint pages need not stay resident after loading; false where ops read the
  // mapping in place (the CPU).
  virtual bool copies_weights() const { return false; }
  // Whether ops return before they have run (a GPU's stream), so that the host can prepare the
  // next step while the device computes this one; false where they run as they are issued.
  virtual bool issues_asynchronously() const { return false; }

  // --- memory ---
  virtual Tensor empty(const std::vector<int64_t>& shape, DType dtype) = 0;
  Tensor empty_act(const std::vector<int64_t>& shape) { return empty(shape, act_dtype()); }
  virtual Tensor from_host_f32(const float* data, const std::vector<int64_t>& shape) = 0;
  virtual Tensor from_host_i32(const int32_t* data, const std::vector<int64_t>& shape) = 0;
  virtual void to_host_f32(const Tensor& t, float* out) = 0;  // converts, synchronizes
  // Overwrites an existing I32 tensor with dst.numel() values from the host, in stream order
  // (the tensor keeps its address: a captured graph's inputs are written this way).
  virtual void upload_i32(const int32_t* data, Tensor& dst) {
    copy_rows(from_host_i32(data, dst.shape), dst, 0);
  }
  virtual void synchronize() = 0;
  // Starts copying the I32 tensor `t` to the host without waiting for the ops before it: the
  // values are those `t` holds once they have run. The host can issue more work meanwhile.
  virtual std::unique_ptr<I32Readback> read_i32_async(const Tensor& t) = 0;

  // Records the ops `record` issues into a graph without running them; nullptr where the
  // backend has no such thing (the caller then runs the ops directly). The graph bakes in the
  // addresses of every tensor it touches: inputs are updated in place between replays, and
  // tensors allocated inside `record` must also be released inside it. No host transfers,
  // synchronization or weight preparation inside `record`.
  virtual std::unique_ptr<OpGraph> capture(const std::function<void()>& record) {
    (void)record;
    return nullptr;
  }

  // Issues each branch's ops so that the branches may run at the same time (on a GPU: one
  // stream each, forked from and joined back into the backend's stream before this returns;
  // inside capture(), parallel branches of the graph), else one after the other. Branches must
  // not touch each other's tensors, and may not nest; ops that keep backend-wide state (the
  // paged KV cache's attention, quantized weights) refuse to run in a branch other than the first.
  virtual void run_concurrently(std::span<const std::function<void()>> branches) {
    for (const auto& branch : branches) branch();
  }

  // --- sampling ---
  // One token per row of logits [rows.size(), vocab], drawn on the device into drawn[0, rows)
  // (I32, at least rows.size() values) in stream order and without waiting: the next step can
  // take them as inputs (DrawnTokens) before the host reads them (read_i32_async), and only the
  // ids travel. A row whose scores are not finite, or overflow under its penalty or temperature,
  // gets -1. Returns false, with nothing issued, when the backend has no device sampler (the CPU:
  // its logits are already in host memory) or cannot take this vocabulary size.
  virtual bool sample_tokens(const Tensor& logits, std::span<const TokenDraw> rows, Tensor& drawn) {
    (void)logits, (void)rows, (void)drawn;
    return false;
  }

  // --- numerics constraints the scheduler plans around ---
  // The fewest positions of a prompt the scheduler computes in one chunk (unless fewer are
  // left), and leaves to compute after a cached prefix. A backend whose linears round a row
  // differently depending on how many rows share the call states its own; 5 is what the
  // scheduler assumed for every backend before backends were asked.
  virtual size_t min_prefill_rows() const { return 5; }

  // --- measurement, for benchmarks (roofline shares are reported against these) ---
  // The memory-bandwidth ceiling measured now, in GB/s: on the CPU a multi-threaded read of a
  // buffer larger than the caches, on a GPU a device-to-device copy (bytes read + written),
  // the median of `passes` passes over `bytes`. 0 means the backend cannot measure it.
  virtual double measure_bandwidth_gbps(size_t bytes, int passes) {
    (void)bytes, (void)passes;
    return 0.0;
  }
  // The benchmarks' ceiling: 1 GiB, 5 passes.
  double measure_bandwidth_gbps() { return measure_bandwidth_gbps(size_t{1} << 30, 5); }
  // Device memory currently allocated by this backend, in bytes (0 on the CPU: see RSS).
  virtual size_t device_memory_used() const { return 0; }

  // --- weights ---
  virtual Linear prepare_linear(const LinearWeight& w) = 0;
  // One Linear whose output columns are the parts' outputs side by side (q | k | v, gate | up),
  // so a decode step reads them in one op. Parts share in_features and format (float, or the
  // same bits and group size); as with prepare_linear, the mapped weight data must outlive
  // the result, the LinearWeight structs need not.
  virtual Linear prepare_fused_linear(const std::vector<const LinearWeight*>& parts) = 0;
  // A small parameter vector/matrix (norm weight, bias, pos_embed, ...) as act_dtype.
  virtual Tensor param(const TensorInfo& t) = 0;
  virtual std::unique_ptr<KvCache> create_kv_cache(const KvCacheConfig& c) = 0;

  // --- ops ---
  // The dtype linear(x, w) wants x in at this many rows: act_dtype(), or BF16 where the backend
  // rounds the activations to bf16 for that linear anyway (a GPU GEMM). layer_norm, rms_norm,
  // add_rms_norm and swiglu then write bf16 (rounded as the linear would round them) and the
  // linear skips its conversion pass; the results are the same bits. F8_E4M3 where an FP8 linear
  // multiplies per-token E4M3 activations (a GPU's FP8 tensor cores): rms_norm, add_rms_norm and
  // swiglu (also as the output of linear_swiglu and linear_add_rms_norm) then write the codes and
  // Tensor::row_scales the linear would make from their bf16 output (the same bits again); other
  // ops refuse such a tensor, and an attention's output stays BF16 (attention_output_dtype).
  virtual DType linear_input_dtype(const Linear& /*w*/, int64_t /*rows*/) const { return act_dtype(); }
  // The dtype for a tensor that several linears read: the one they all take, else act_dtype().
  DType shared_input_dtype(std::span<const Linear* const> consumers, int64_t rows) const {
    if (consumers.empty()) return act_dtype();
    const DType wanted = linear_input_dtype(*consumers.front(), rows);
    for (const Linear* w : consumers)
      if (linear_input_dtype(*w, rows) != wanted) return act_dtype();
    return wanted;
  }
  // A tensor shaped like `from` for linear(., w) to read at from's rows: `from` itself where it is
  // already in that dtype (an op may then write in place), else a new one.
  Tensor input_for(const Linear& w, const Tensor& from) {
    const DType wanted = linear_input_dtype(w, from.rows());
    return from.dtype == wanted ? from : empty(from.shape, wanted);
  }
  // The dtype for vit_attention's qkv, written by linear(x, qkv) at this many rows: act_dtype(),
  // or BF16 where the attention multiplies bf16 anyway and that linear can write it (a GPU GEMM:
  // the bias is added to the f32 sums before the one rounding); x is then in linear_input_dtype.
  virtual DType vit_attention_input_dtype(const Linear& /*qkv*/, int64_t /*rows*/) const { return act_dtype(); }
  // y[M,N] = x[M,K] W^T (+ bias); x in act_dtype() or linear_input_dtype(w, M); y in act_dtype(),
  // or BF16 where vit_attention_input_dtype(w, M) says so.
  virtual void linear(const Tensor& x, const Linear& w, Tensor& y) = 0;
  // images [B, H, W, 3] f32 NHWC -> y [B * (H/p) * (W/p), out] (conv p x p stride p, row-major patches)
  virtual void patch_embed(const Tensor& images, const Linear& w, int patch, Tensor& y) = 0;
  virtual void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor& y) = 0;
  // y (and layer_norm's y, add_rms_norm's out, swiglu's y) in act_dtype() or a linear_input_dtype.
  virtual void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& y) = 0;
  // x += y, then out = rms_norm(x) (the residual add and the next norm in one pass; rounds
  // exactly as add then rms_norm). out must not overlap x or y.
  virtual void add_rms_norm(Tensor& x, const Tensor& y, const Tensor& w, float eps, Tensor& out) = 0;
  // x += y (scale given: x += scale[col] * y, a LayerScale), then out = layer_norm(x): the ViT's
  // residual step and the next norm (rounds exactly as add / add_scaled then layer_norm; a backend
  // may do both in one pass). out must not overlap x or y.
  virtual void add_layer_norm(Tensor& x, const Tensor& y, const Tensor* scale, const Tensor& w, const Tensor& b,
                              float eps, Tensor& out) {
    if (scale != nullptr)
      add_scaled(x, y, *scale);
    else
      add(x, y);
    layer_norm(x, w, b, eps, out);
  }
  // y = gelu(x) (erf form) element by element; y may be x (in place), f32 or a linear_input_dtype.
  virtual void gelu_erf(const Tensor& x, Tensor& y) = 0;
  // gate_up [T, 2I] (gate | up) -> y [T, I] = silu(gate) * up
  virtual void swiglu(const Tensor& gate_up, Tensor& y) = 0;
  // y = swiglu(linear(x, w)) for w = gate | up: the same bits as those two ops, which a backend
  // may fuse (a GPU does at decode row counts), except that at row counts where the linear
  // multiplies bf16 or FP8 activations (linear_input_dtype: a GPU's prefill) the backend may round
  // gate | up (or its unscaled FP8 products) to bf16 too; gate_up [T, 2I] is scratch for the
  // linear's output (f32, or bf16 in its first half).
  virtual void linear_swiglu(const Tensor& x, const Linear& w, Tensor& gate_up, Tensor& y) {
    linear(x, w, gate_up);
    swiglu(gate_up, y);
  }
  virtual void add(Tensor& x, const Tensor& y) = 0;                       // x += y

  // --- a decoder layer's residual steps in one op each, where the backend fuses them ---
  // Whether rms_norm_linear / rms_norm_linear_swiglu with this linear, and linear_add with it, run
  // as one fused op at this many rows (a GPU's decode GEMV). Where they would not, add_rms_norm
  // between plain linears is the shorter sequence, and the decoder uses that.
  virtual bool fuses_rms_norm_into(const Linear& w, int64_t rows) const {
    (void)w, (void)rows;
    return false;
  }
  virtual bool fuses_add_into(const Linear& w, int64_t rows) const {
    (void)w, (void)rows;
    return false;
  }
  // y = linear(rms_norm(x, norm_w), w), the bits of those two ops; `normed` (rms_norm's output
  // for x, in linear_input_dtype) is scratch for the unfused path.
  virtual void rms_norm_linear(const Tensor& x, const Tensor& norm_w, float eps, const Linear& w, Tensor& normed,
                               Tensor& y) {
    rms_norm(x, norm_w, eps, normed);
    linear(normed, w, y);
  }
  // y = swiglu(linear(rms_norm(x, norm_w), w)) for w = gate | up, the bits of linear_swiglu on
  // the normed rows; normed and gate_up are scratch for the unfused path.
  virtual void rms_norm_linear_swiglu(const Tensor& x, const Tensor& norm_w, float eps, const Linear& w,
                                      Tensor& normed, Tensor& gate_up, Tensor& y) {
    rms_norm(x, norm_w, eps, normed);
    linear_swiglu(normed, w, gate_up, y);
  }
  // x += linear(a, w), the bits of those two ops; `out` (the linear's output) is scratch for
  // the unfused path.
  virtual void linear_add(const Tensor& a, const Linear& w, Tensor& out, Tensor& x) {
    linear(a, w, out);
    add(x, out);
  }
  // x += linear(a, w), then normed = rms_norm(x, norm_w): the bits of linear then add_rms_norm,
  // where a backend may fold a pass the linear would make over its output (the FP8 tensor cores'
  // token and channel scales, on a GPU) into the add; `out` is the linear's output (scratch).
  virtual void linear_add_rms_norm(const Tensor& a, const Linear& w, Tensor& out, Tensor& x, const Tensor& norm_w,
                                   float eps, Tensor& normed) {
    linear(a, w, out);
    add_rms_norm(x, out, norm_w, eps, normed);
  }

  virtual void add_scaled(Tensor& x, const Tensor& y, const Tensor& scale) = 0;  // x += scale[col] * y
  // x[r, :] += table[r % table.rows, :]  (position embeddings over a batch)
  virtual void add_rows_cyclic(Tensor& x, const Tensor& table) = 0;
  // dst rows [dst_row, dst_row + src.rows) = src
  virtual void copy_rows(const Tensor& src, Tensor& dst, int64_t dst_row) = 0;
  // dst[:, col_offset : col_offset + src.cols] = src
  virtual void copy_cols(const Tensor& src, Tensor& dst, int64_t col_offset) = 0;
  // y[i] = x[rows[i]]
  virtual void gather_rows(const Tensor& x, const Tensor& rows, Tensor& y) = 0;
  // y[i] = table[ids[i]], or table[drawn[sources[i]]] where `from` names drawn tokens and
  // sources[i] >= 0 (DrawnTokens).
  virtual void embedding(const Tensor& ids, const Linear& table, Tensor& y, const DrawnTokens& from) = 0;

  // Bidirectional attention within each of B groups of T tokens.
  // qkv [B*T, 3*H*D] (q | k | v, head-major inside each) -> y [B*T, H*D]; qkv in act_dtype() or
  // vit_attention_input_dtype, y in act_dtype() or a linear_input_dtype.
  virtual void vit_attention(const Tensor& qkv, int batch, int tokens, int heads, int head_dim,
                             Tensor& y) = 0;
  // qkv [T, (Hq + 2 Hkv) * D] (q | k | v, head-major inside each; Hkv and D from the cache):
  // rotate-half RoPE over the full head_dim at `positions` [T] (I32); the rotated q goes to
  // q [T, Hq*D], the rotated k and the v into the cache at the batch's slots
  // (batch.token_seq / token_pos). qkv is left as it was.
  virtual void rope_kv_write(const Tensor& qkv, const Tensor& positions, float theta, KvCache& cache,
                             int layer, const AttentionBatch& batch, Tensor& q) = 0;
  // Causal attention of q [T, Hq*D] over the cache (each token sees its sequence's
  // positions 0..pos, GQA groups of Hq/Hkv heads) -> y [T, Hq*D]. Scale head_dim^-0.5.
  // y in act_dtype(), or in attention_output_dtype where that says so.
  virtual void paged_attention(const Tensor& q, KvCache& cache, int layer,
                               const AttentionBatch& batch, int q_heads, Tensor& y) = 0;
  // rope_kv_write into q (scratch), then paged_attention -> y: the same results, where a backend
  // may run both in one pass for a batch with one_token_per_sequence (q then stays unwritten).
  virtual void rope_paged_attention(const Tensor& qkv, const Tensor& positions, float theta, KvCache& cache,
                                    int layer, const AttentionBatch& batch, int q_heads, Tensor& q, Tensor& y) {
    rope_kv_write(qkv, positions, theta, cache, layer, batch, q);
    paged_attention(q, cache, layer, batch, q_heads, y);
  }
  // linear(x, w, qkv), then rope_paged_attention(qkv, ...): the same results, where a backend may
  // leave the projection's output scales for the RoPE to apply as it reads qkv (a GPU's FP8
  // prefill: no scale pass over q | k | v).
  virtual void linear_rope_paged_attention(const Tensor& x, const Linear& w, Tensor& qkv, const Tensor& positions,
                                           float theta, KvCache& cache, int layer, const AttentionBatch& batch,
                                           int q_heads, Tensor& q, Tensor& y) {
    linear(x, w, qkv);
    rope_paged_attention(qkv, positions, theta, cache, layer, batch, q_heads, q, y);
  }
  // The dtype paged_attention writes y in for this batch of `tokens` tokens when `o` (the
  // output projection, which reads y) comes next: act_dtype(), or the o projection's bf16 input
  // where the backend's kernel for this batch rounds its output itself (no conversion before o).
  virtual DType attention_output_dtype(const AttentionBatch& batch, int64_t tokens, int q_heads, int kv_heads,
                                       const Linear& o) const {
    (void)batch, (void)tokens, (void)q_heads, (void)kv_heads, (void)o;
    return act_dtype();
  }
};

struct BackendOptions {
  DeviceKind device = DeviceKind::CPU;
  int threads = 0;  // CPU worker threads; 0 = all cores
  int gpu = 0;      // CUDA device ordinal
};

// Throws moxin::Error if the device is not available (e.g. CUDA not built or no GPU).
std::unique_ptr<Backend> create_backend(const BackendOptions& options);

}  // namespace moxin
