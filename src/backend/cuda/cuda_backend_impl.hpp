// The CUDA backend class (internal: the rest of the engine sees only backend.hpp and
// cuda_backend.hpp). Owns the device, the stream, the cuBLASLt workspace, the scratch buffers
// that ops use instead of allocating, and the weight uploader.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "backend/backend.hpp"
#include "backend/cuda/cuda_backend.hpp"
#include "backend/cuda/gemm_lt.hpp"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/weight_upload.hpp"
#include "core/check.hpp"

namespace moxin::cuda {

constexpr size_t kGemmWorkspaceBytes = 32u << 20;  // cuBLASLt's, per lane (cudaMalloc'd by LtGemm)

class PinnedI32Pool;  // cuda_readback.cpp

// Outlives every tensor of the backend (their deleters hold it): frees go to its stream.
struct DeviceContext {
  int device = 0;
  cudaStream_t stream = nullptr;  // the backend's stream
  // Where ops are issued now, and where device_alloc allocates and frees: `stream`, or one of
  // `branch_streams` while CudaBackend::run_concurrently issues a branch (a branch's
  // temporaries are its own, so stream order on that stream keeps them safe).
  cudaStream_t current = nullptr;
  std::vector<cudaStream_t> branch_streams;  // made on demand, destroyed with the context
  int multiprocessors = 0;
  std::atomic<int64_t> allocated_bytes{0};  // live device_alloc allocations
  explicit DeviceContext(int ordinal);
  ~DeviceContext();
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;
};

// Stream-ordered device allocation on the context's current stream, freed on the stream that is
// current when the last view dies.
std::shared_ptr<void> device_alloc(const std::shared_ptr<DeviceContext>& context, size_t bytes);

// What prepare_linear returns behind Linear::impl.
struct CudaLinear final : LinearImpl {
  std::shared_ptr<void> weight;  // bf16 [out, in]
  std::shared_ptr<void> bias;    // f32 [out] or null
  // The bias as bf16 [out] where every part stores its bias as bf16 (so exactly), else null: what
  // a bf16-output GEMM's epilogue reads (writes_bf16_output).
  std::shared_ptr<void> bias_bf16;
  // Quantized weights (quant.bits != 0, `weight` null): the storage behind quant's pointers.
  QuantMatrix quant;
  std::shared_ptr<void> codes, scale_bias;
  // FP8 weights (fp8.codes non-null, `weight` null; cuda_fp8_linear.cpp): codes and scales live
  // in `codes` and `scale_bias`.
  Fp8Matrix fp8;
  bool is_fp8() const { return fp8.codes != nullptr; }
  // Quantized or FP8: the elements of the weights as bf16 (out * in).
  int64_t dense_elems() const {
    return is_fp8() ? int64_t{fp8.rows} * fp8.cols : int64_t{quant.rows} * quant.cols;
  }
};

// The backend's own form of a prepared Linear; a weight prepared elsewhere is refused by name.
inline const CudaLinear& cuda_linear(const Linear& w, const char* op) {
  const auto* impl = dynamic_cast<const CudaLinear*>(w.impl.get());
  MOXIN_CHECK(impl != nullptr, "[cuda] ", op,
              ": the weight was not prepared by this CUDA backend (call prepare_linear on it)");
  return *impl;
}

// The paged KV cache: per layer K then V, each [num_blocks, block_size, kv_heads, head_dim]
// bf16, in one zeroed allocation.
// bf16: per layer K then V, [num_blocks, block_size, kv_heads, head_dim] each. FP8: per layer
// K codes, V codes (the same layout, one byte each), then the K and V exponent bytes
// ([num_blocks, block_size, kv_heads] each, padded to 16 bytes: the decode kernel copies the
// aligned 4-byte word around a row's exponent).
class CudaKvCache final : public KvCache {
 public:
  CudaKvCache(const KvCacheConfig& c, std::shared_ptr<void> storage)
      : KvCache(c, c.dtype == KvCacheDType::Fp8E4M3 ? DType::F8_E4M3 : DType::BF16), storage_(std::move(storage)) {}
  static size_t values_per_tensor(const KvCacheConfig& c) {
    return static_cast<size_t>(c.num_blocks) * c.block_size * c.kv_heads * c.head_dim;
  }
  static size_t exponent_bytes(const KvCacheConfig& c) {
    return (static_cast<size_t>(c.num_blocks) * c.block_size * c.kv_heads + 15) / 16 * 16;
  }
  static size_t layer_bytes(const KvCacheConfig& c) {
    return c.dtype == KvCacheDType::Fp8E4M3 ? 2 * (values_per_tensor(c) + exponent_bytes(c))
                                             : 2 * values_per_tensor(c) * sizeof(bf16_bits);
  }
  PagedLayer layer(int index) const {
    const auto& c = config_;
    const size_t values = values_per_tensor(c);
    auto* base = static_cast<unsigned char*>(storage_.get()) + layer_bytes(c) * static_cast<size_t>(index);
    PagedLayer l{nullptr, nullptr, c.num_blocks, c.block_size, c.kv_heads, c.head_dim};
    if (c.dtype == KvCacheDType::Fp8E4M3) {
      l.k8 = base;
      l.v8 = base + values;
      l.k_exp = reinterpret_cast<int8_t*>(base + 2 * values);
      l.v_exp = l.k_exp + exponent_bytes(c);
    } else {
      l.k = reinterpret_cast<bf16_bits*>(base);
      l.v = l.k + values;
    }
    return l;
  }

 private:
  std::shared_ptr<void> storage_;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device_ordinal);
  ~CudaBackend() override;

  DeviceKind kind() const override { return DeviceKind::CUDA; }
  std::string name() const override { return name_; }
  DType act_dtype() const override { return DType::F32; }
  bool copies_weights() const override { return true; }
  bool issues_asynchronously() const override { return true; }

  Tensor empty(const std::vector<int64_t>& shape, DType dtype) override;
  Tensor from_host_f32(const float* data, const std::vector<int64_t>& shape) override;
  Tensor from_host_i32(const int32_t* data, const std::vector<int64_t>& shape) override;
  void to_host_f32(const Tensor& t, float* out) override;
  void upload_i32(const int32_t* data, Tensor& dst) override;  // one copy, no allocation
  void synchronize() override;
  using Backend::measure_bandwidth_gbps;
  double measure_bandwidth_gbps(size_t bytes, int passes) override;  // a device-to-device copy, read + write
  size_t device_memory_used() const override;
  std::unique_ptr<OpGraph> capture(const std::function<void()>& record) override {
    return capture_cuda_graph(*this, record);
  }

  Linear prepare_linear(const LinearWeight& w) override;  // prepare_fused_linear of one part
  Linear prepare_fused_linear(const std::vector<const LinearWeight*>& parts) override;
  // Quantized parts (cuda_quant_linear.cpp): codes, scales and biases concatenated by rows.
  Linear prepare_quantized_linear(const std::vector<const LinearWeight*>& parts);
  // FP8 parts (cuda_fp8_linear.cpp): codes and per-row scales concatenated by rows.
  Linear prepare_fp8_linear(const std::vector<const LinearWeight*>& parts);
  Tensor param(const TensorInfo& t) override;
  std::unique_ptr<KvCache> create_kv_cache(const KvCacheConfig& c) override;

  DType linear_input_dtype(const Linear& w, int64_t rows) const override;
  DType vit_attention_input_dtype(const Linear& qkv, int64_t rows) const override;
  void linear(const Tensor& x, const Linear& w, Tensor& y) override;
  void patch_embed(const Tensor& images, const Linear& w, int patch, Tensor& y) override;
  void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor& y) override;
  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& y) override;
  void add_rms_norm(Tensor& x, const Tensor& y, const Tensor& w, float eps, Tensor& out) override;
  void add_layer_norm(Tensor& x, const Tensor& y, const Tensor* scale, const Tensor& w, const Tensor& b, float eps,
                      Tensor& out) override;
  void gelu_erf(const Tensor& x, Tensor& y) override;
  void swiglu(const Tensor& gate_up, Tensor& y) override;
  void linear_swiglu(const Tensor& x, const Linear& w, Tensor& gate_up, Tensor& y) override;
  void add(Tensor& x, const Tensor& y) override;
  // cuda_fused_residual.cpp
  bool fuses_rms_norm_into(const Linear& w, int64_t rows) const override;
  bool fuses_add_into(const Linear& w, int64_t rows) const override;
  void rms_norm_linear(const Tensor& x, const Tensor& norm_w, float eps, const Linear& w, Tensor& normed,
                       Tensor& y) override;
  void rms_norm_linear_swiglu(const Tensor& x, const Tensor& norm_w, float eps, const Linear& w, Tensor& normed,
                              Tensor& gate_up, Tensor& y) override;
  void linear_add(const Tensor& a, const Linear& w, Tensor& out, Tensor& x) override;
  // FP8 rows on the FP8 tensor cores: the add applies the token and channel scales as it reads
  // the products (cuda_fp8_linear.cpp); otherwise linear then add_rms_norm.
  void linear_add_rms_norm(const Tensor& a, const Linear& w, Tensor& out, Tensor& x, const Tensor& norm_w, float eps,
                           Tensor& normed) override;
  void add_scaled(Tensor& x, const Tensor& y, const Tensor& scale) override;
  void add_rows_cyclic(Tensor& x, const Tensor& table) override;
  void copy_rows(const Tensor& src, Tensor& dst, int64_t dst_row) override;
  void copy_cols(const Tensor& src, Tensor& dst, int64_t col_offset) override;
  void gather_rows(const Tensor& x, const Tensor& rows, Tensor& y) override;
  void embedding(const Tensor& ids, const Linear& table, Tensor& y, const DrawnTokens& from) override;
  void vit_attention(const Tensor& qkv, int batch, int tokens, int heads, int head_dim,
                     Tensor& y) override;
  void rope_kv_write(const Tensor& qkv, const Tensor& positions, float theta, KvCache& cache,
                     int layer, const AttentionBatch& batch, Tensor& q) override;
  void paged_attention(const Tensor& q, KvCache& cache, int layer, const AttentionBatch& batch,
                       int q_heads, Tensor& y) override;
  void rope_paged_attention(const Tensor& qkv, const Tensor& positions, float theta, KvCache& cache, int layer,
                            const AttentionBatch& batch, int q_heads, Tensor& q, Tensor& y) override;
  // FP8 qkv rows on the tensor cores from per-token E4M3 input: the GEMM's products unscaled and
  // the RoPE + K/V write applying the scales (cuda_fp8_linear.cpp); otherwise the two ops.
  void linear_rope_paged_attention(const Tensor& x, const Linear& w, Tensor& qkv, const Tensor& positions, float theta,
                                   KvCache& cache, int layer, const AttentionBatch& batch, int q_heads, Tensor& q,
                                   Tensor& y) override;
  // Whether rope_paged_attention runs this batch of `tokens` tokens as one kernel
  // (rope_paged_attention_mma): a one-token-per-sequence batch on the split-K tensor-core kernel
  // over a bf16 cache, with the fusion on.
  bool fuses_rope_into_attention(const KvCacheConfig& cache, const AttentionBatch& batch, int64_t tokens,
                                 int q_heads) const;
  DType attention_output_dtype(const AttentionBatch& batch, int64_t tokens, int q_heads, int kv_heads,
                               const Linear& o) const override;
  // cuda_sampling.cpp
  bool sample_tokens(const Tensor& logits, std::span<const TokenDraw> rows, Tensor& drawn) override;
  // cuda_readback.cpp: into pinned host memory, an event marks the copy's end.
  std::unique_ptr<I32Readback> read_i32_async(const Tensor& t) override;

  cudaStream_t stream() const { return context_->current; }
  void run_concurrently(std::span<const std::function<void()>> branches) override;
  void set_attention_path(CudaAttentionPath path) { attention_path_ = path; }
  // Whether paged_attention runs a batch of `tokens` tokens over `num_seqs` sequences on the
  // split-K (decode) kernels rather than the tiled (prefill) ones.
  bool attention_uses_split(int64_t tokens, int64_t num_seqs, int q_heads, int kv_heads) const;
  void set_linear_path(CudaLinearPath path) { linear_path_ = path; }
  // FP8 weights above kQuantMmaMaxRows rows (a prefill, or a decode batch of more than 64
  // sequences): FP8 tensor cores on per-token E4M3 activations (true, the default: each row's
  // activations rounded to E4M3's 4 significant bits with their own scale, as vLLM's dynamic FP8
  // does; issue #11), or the codes widened to bf16 for cuBLASLt's bf16 GEMM with the activations
  // rounded to bf16 (false; MOXIN_CUDA_FP8_TENSOR_CORES=0 at construction). Up to 64 rows the
  // activations stay exact (fp8_gemv / fp8_mma) either way.
  void set_fp8_tensor_cores(bool on) { fp8_tensor_cores_ = on; }
  bool fp8_tensor_cores() const { return fp8_tensor_cores_; }
  // Whether decode linears take the residual steps in (fuses_rms_norm_into): on by default,
  // MOXIN_CUDA_FUSE_RESIDUAL=0 turns it off at construction (for A/B runs).
  void set_fused_residual(bool on) { fused_residual_ = on; }
  // Whether rope_paged_attention may fuse (fuses_rope_into_attention): on by default,
  // MOXIN_CUDA_FUSE_ROPE=0 turns it off at construction (for A/B runs).
  void set_fused_rope(bool on) { fused_rope_ = on; }
  // Number of context splits the split-K kernel uses for this batch (exposed for benchmarks).
  int attention_splits(int tokens, int q_heads, int kv_heads, int head_dim, int max_context) const;

 private:
  // The kernel a bf16-weight linear of m rows runs on (skinny_usable: K and x allow the skinny
  // GEMM); Gemm is cuBLASLt on bf16 activations.
  enum class DecodeKernel { Skinny, Gemv, Gemm };
  DecodeKernel bf16_decode_kernel(int64_t m, int64_t n, int64_t k, bool skinny_usable) const;
  // The same for activations the backend allocated (256-byte aligned: only the shape decides).
  DecodeKernel bf16_decode_kernel_for_shape(int64_t m, int64_t n, int64_t k) const;
  // Whether this linear at m rows multiplies bf16 activations (a cuBLASLt bf16 GEMM).
  bool takes_bf16_activations(const CudaLinear& w, int64_t m, int64_t n, int64_t k) const;
  // Whether this FP8 linear at m rows multiplies per-token E4M3 activations in one FP8 GEMM of all
  // m rows (the FP8 tensor cores, and cuBLASLt has an algorithm for the shape with an f32 and a
  // bf16 output): an op before it can then write the codes (Backend::linear_input_dtype).
  bool takes_e4m3_activations(const CudaLinear& w, int64_t m, int64_t n, int64_t k) const;
  // Whether this linear at m rows can write bf16 (a dense cuBLASLt GEMM with a bf16-output
  // algorithm for the shape, the bias - exactly bf16, as checkpoints store it - added in f32
  // before the one rounding).
  bool writes_bf16_output(const CudaLinear& w, int64_t m, int64_t n, int64_t k) const;
  // Whether a split-K batch of this GQA group and head_dim runs on the tensor-core kernel
  // (paged_attention_mma), the one rope_paged_attention can fuse into.
  bool split_on_tensor_cores(int group, int head_dim) const;
  // Whether a fused residual step (cuda_fused_residual.cpp) runs this linear at m rows; the
  // kernel's own pointer checks come on top.
  bool fuses_residual_step(const CudaLinear& w, int64_t m, int64_t n, int64_t k, bool norm_in) const;
  // One fused decode linear (kernels.hpp's LinearFusion) of x into y; false where its kernel does
  // not take these operands (the caller then runs the separate ops).
  bool run_fused_linear(const Tensor& x, const Linear& w, const LinearFusion& fusion, bool gated, Tensor& y,
                        const char* op);

  // The large-M linear: rows of x go through the bf16 scratch in chunks that fit it;
  // fill(first_row, rows, scratch) writes those rows' bf16 activations.
  template <class Fill>
  void gemm_rows(int64_t rows, const CudaLinear& w, int64_t n, int64_t k, float* y, Fill fill);

  // Quantized linear for M <= kQuantMmaMaxRows (GEMV or tensor cores); larger M go through
  // dequantized(), a bf16 copy of the weights in a scratch shared by all quantized linears
  // (cuda_quant_linear.cpp). FP8 weights take fp8_gemv up to kFp8MmaMinRows - 1 rows, fp8_mma up
  // to kQuantMmaMaxRows where K allows (fp8_decode_mma), else fp8_gemv up to kFp8GemvMaxRows, then
  // the same scratch (holding the codes) and scale_rows_columns on y, or where
  // fp8_on_tensor_cores the FP8 tensor cores on per-token quantized activations
  // (cuda_fp8_linear.cpp), which take bf16 activations (quantize_rows_e4m3 rounds f32 ones to
  // bf16 first).
  void quantized_linear_decode(const float* x, int64_t m, const CudaLinear& w, float* y);
  bool fp8_decode_mma(int64_t m, int64_t k) const;
  // Whether m rows of an FP8 linear go to the FP8 tensor cores (fp8_tensor_core_rows).
  bool fp8_on_tensor_cores(int64_t m) const { return fp8_tensor_cores_ && m > kQuantMmaMaxRows; }
  void fp8_linear_decode(const float* x, int64_t m, const CudaLinear& w, float* y);
  const CudaLinear& dequantized(const CudaLinear& w);
  // The FP8 tensor-core path over chunks of rows that fit the scratch (cuda_fp8_linear.cpp);
  // returns how many leading rows of y it wrote (it stops at a chunk cuBLASLt has no FP8
  // algorithm for); E4M3 x (already quantized): one GEMM of all m rows, m or 0 of them written.
  // With `chunk_done`, y (f32, or bf16) is left unscaled where cuBLASLt does not scale it and
  // each chunk is handed on: (first row, rows, their token scales, whether y is scaled);
  // without, y is f32 and scaled.
  using Fp8ChunkDone = std::function<void(int64_t first, int64_t rows, const float* token_scales, bool scaled)>;
  int64_t fp8_tensor_core_rows(InputActivations x, int64_t m, const CudaLinear& w, Activations y,
                               const Fp8ChunkDone& chunk_done = {});
  // rope_kv_write with the scales an FP8 GEMM left in qkv (none: rope_kv_write itself).
  void rope_kv_write_scaled(const Tensor& qkv, QkvScales scales, const Tensor& positions, float theta, KvCache& cache,
                            int layer, const AttentionBatch& batch, Tensor& q);
  bool fp8_gemm_rows(const uint8_t* codes, const float* scales, int64_t first, int64_t count, const CudaLinear& w,
                     Activations y, const Fp8ChunkDone& chunk_done);
  // The same for gate | up, y = swiglu(gate | up) with the scales applied as the swiglu reads
  // gate_up's products, written as bf16 into its memory (swiglu_scaled): no scale pass over it.
  int64_t fp8_tensor_core_swiglu_rows(InputActivations x, int64_t m, const CudaLinear& w, float* gate_up,
                                      Activations y);

  // What ops on one stream use of their own: cuBLASLt (its workspace) and the bf16 scratch of
  // activations converted for it. Lane 0 is the backend's stream; lane i > 0 runs branch i of
  // run_concurrently.
  struct Lane {
    cudaStream_t stream = nullptr;
    std::unique_ptr<LtGemm> gemm;
    std::shared_ptr<void> scratch_bf16;
    cudaEvent_t done = nullptr;  // recorded at the end of the lane's branch
  };
  Lane& lane() { return lanes_[current_lane_]; }
  // Makes lane `index` current (ops and allocations go to its stream).
  void use_lane(size_t index);
  void add_lane();  // allocates: never inside a graph capture
  // Ops that use backend-wide scratch (split-K attention partials, dequantized weights) name
  // themselves here: they run on lane 0 only.
  void require_main_lane(const char* op) const;

  std::shared_ptr<DeviceContext> context_;
  std::string name_;
  std::vector<Lane> lanes_;
  size_t current_lane_ = 0;
  cudaEvent_t fork_ = nullptr;  // recorded on lane 0 where branches start
  std::shared_ptr<PinnedI32Pool> pinned_;  // read_i32_async's buffers, made on first use
  std::unique_ptr<WeightUploader> uploader_;
  int64_t scratch_elems_ = 0;  // bf16 elements of each lane's scratch
  std::shared_ptr<void> attention_partial_;  // split-K partial results
  int64_t attention_partial_floats_ = 0;
  std::shared_ptr<void> attention_counters_;  // split-K merge counters, kept zeroed
  static constexpr int64_t kAttentionCounters = 64ll << 10;  // (token, kv head) pairs per split-K call
  CudaAttentionPath attention_path_ = CudaAttentionPath::Auto;
  CudaLinearPath linear_path_ = CudaLinearPath::Auto;
  bool fp8_tensor_cores_ = true;
  // Ops before an FP8 tensor-core linear write its per-token E4M3 input (takes_e4m3_activations);
  // MOXIN_CUDA_E4M3_ACTIVATIONS=0 makes them write bf16 for the linear to quantize (A/B runs).
  bool e4m3_activations_ = true;
  bool fused_residual_ = true;
  bool fused_rope_ = true;
  int64_t quant_largest_elems_ = 0;  // largest quantized linear prepared so far (out * in)
  CudaLinear quant_dense_;           // weight: bf16 scratch of quant_dense_elems_, made on demand
  int64_t quant_dense_elems_ = 0;
};

// `backend` as the CUDA backend, for the entry points that tune it (set_cuda_*, graph capture);
// a clear error naming `op` where it is another backend.
CudaBackend& cuda_backend_of(Backend& backend, const char* op);

}  // namespace moxin::cuda
