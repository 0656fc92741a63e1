// The CPU implementation of the ops interface. Its member functions are defined by topic in
// cpu_backend.cpp (memory, weights), cpu_ops_linear.cpp, cpu_ops_elementwise.cpp and
// cpu_ops_attention.cpp. Activations are F32; weights are read in place from the mapped file.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.hpp"
#include "backend/cpu/cpu_kernels.hpp"
#include "core/thread_pool.hpp"
#include "quant/affine_quant.hpp"

namespace moxin::cpu {

// What Linear::impl points to on the CPU.
struct CpuLinear final : LinearImpl {
  std::string name;     // tensor name, for error messages
  WeightView weight;    // into the mapped checkpoint: never copied
  std::vector<float> bias;  // empty when the layer has none
  QuantView quant;          // quant.bits != 0: weight holds packed codes (cpu_quant_kernels.hpp)
  // FP8 weights (cpu_fp8_linear.cpp): `weight` views fp8_codes, the E4M3 codes widened to BF16
  // (exactly: every E4M3 value is a BF16 value), and linear() multiplies output column n by
  // channel_scales[n] after the dense matmul. Both empty otherwise.
  std::vector<uint16_t> fp8_codes;
  std::vector<float> channel_scales;
  // A fused Linear (prepare_fused_linear): each part writes its own column range of y, in
  // order; `weight` then only records the whole shape (no data).
  std::vector<std::shared_ptr<const CpuLinear>> parts;
};

// K and V of every layer in one zero-initialized allocation on huge pages (core/large_buffer.hpp;
// pages are committed on first write): layer l's K region, then its V region, each [num_blocks,
// kv_heads, block_size, head_dim]: F32 floats, or (KvCacheDType::Fp8E4M3) E4M3 codes followed by
// one exponent per row in the same order (src/core/fp8_kv.hpp). Head-major within a block, so that
// the rows one attention task reads (one kv head of a sequence) are adjacent block by block, which
// the hardware prefetchers stream; rows of all heads interleaved (1-4 KB apart) defeated them.
class CpuKvCache final : public KvCache {
 public:
  explicit CpuKvCache(const KvCacheConfig& config);
  bool fp8() const { return element_ == DType::F8_E4M3; }
  // F32 caches.
  float* keys(int layer) const { return reinterpret_cast<float*>(region(layer, 0)); }
  float* values(int layer) const { return reinterpret_cast<float*>(region(layer, 1)); }
  // The row of a kv head at position `index` of physical block `block`; its values start at
  // row * head_dim.
  int64_t row(int64_t block, int64_t index, int64_t head) const {
    return (block * config_.kv_heads + head) * config_.block_size + index;
  }
  // FP8 caches: row r has head_dim codes at codes + r * head_dim and its exponent at exponents[r].
  struct Fp8Rows {
    uint8_t* codes;
    int8_t* exponents;
  };
  Fp8Rows fp8_keys(int layer) const { return fp8_rows(region(layer, 0)); }
  Fp8Rows fp8_values(int layer) const { return fp8_rows(region(layer, 1)); }

 private:
  struct Free {
    size_t bytes;
    void operator()(std::byte* p) const;
  };
  std::byte* region(int layer, int which) const {
    return storage_.get() + (2 * static_cast<size_t>(layer) + static_cast<size_t>(which)) * region_bytes_;
  }
  Fp8Rows fp8_rows(std::byte* region) const {
    return {reinterpret_cast<uint8_t*>(region), reinterpret_cast<int8_t*>(region + rows_ * config_.head_dim)};
  }
  size_t rows_ = 0;  // num_blocks * block_size * kv_heads
  size_t region_bytes_ = 0;
  std::unique_ptr<std::byte, Free> storage_;
};

class CpuBackend final : public Backend {
 public:
  CpuBackend(int threads, const Kernels& kernels);

  DeviceKind kind() const override { return DeviceKind::CPU; }
  std::string name() const override;
  DType act_dtype() const override { return DType::F32; }

  Tensor empty(const std::vector<int64_t>& shape, DType dtype) override;
  Tensor from_host_f32(const float* data, const std::vector<int64_t>& shape) override;
  Tensor from_host_i32(const int32_t* data, const std::vector<int64_t>& shape) override;
  void to_host_f32(const Tensor& t, float* out) override;
  void synchronize() override {}
  std::unique_ptr<I32Readback> read_i32_async(const Tensor& t) override;  // copies at once
  // How a linear rounds a row depends on the rows beside it: the dense GEMV (up to
  // kGemvMaxRows = 128 rows, cpu_matmul.hpp) takes activation rows in groups of 4 and sums a
  // group of 1-2 rows with two accumulators per lane but one of 3-4 with one; above 128 rows
  // the blocked GEMM takes over; quantized weights go through their own GEMV up to
  // kQuantGemvMaxRows = 8 rows and dequantize into the dense path above. So no chunk size
  // makes a chunked prefill bit-identical to a one-shot one in general (tests/py/test_server.py
  // compares greedy text, which such last-bit differences rarely flip). 5 dates from a GEMV
  // of at most 4 rows; it is kept so that the scheduler's chunking, and so its outputs, do not
  // change.
  size_t min_prefill_rows() const override { return 5; }
  using Backend::measure_bandwidth_gbps;
  double measure_bandwidth_gbps(size_t bytes, int passes) override;  // cpu_bandwidth.cpp

  Linear prepare_linear(const LinearWeight& w) override;
  Linear prepare_fused_linear(const std::vector<const LinearWeight*>& parts) override;
  Linear prepare_quantized_linear(const LinearWeight& w);  // cpu_quant_linear.cpp
  Linear prepare_fp8_linear(const LinearWeight& w);        // cpu_fp8_linear.cpp
  Tensor param(const TensorInfo& t) override;
  std::unique_ptr<KvCache> create_kv_cache(const KvCacheConfig& c) override;

  void linear(const Tensor& x, const Linear& w, Tensor& y) override;
  void patch_embed(const Tensor& images, const Linear& w, int patch, Tensor& y) override;
  void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor& y) override;
  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& y) override;
  void add_rms_norm(Tensor& x, const Tensor& y, const Tensor& w, float eps, Tensor& out) override;
  void gelu_erf(const Tensor& x, Tensor& y) override;
  void swiglu(const Tensor& gate_up, Tensor& y) override;
  void add(Tensor& x, const Tensor& y) override;
  void add_scaled(Tensor& x, const Tensor& y, const Tensor& scale) override;
  void add_rows_cyclic(Tensor& x, const Tensor& table) override;
  void copy_rows(const Tensor& src, Tensor& dst, int64_t dst_row) override;
  void copy_cols(const Tensor& src, Tensor& dst, int64_t col_offset) override;
  void gather_rows(const Tensor& x, const Tensor& rows, Tensor& y) override;
  void embedding(const Tensor& ids, const Linear& table, Tensor& y, const DrawnTokens& from) override;

  void vit_attention(const Tensor& qkv, int batch, int tokens, int heads, int head_dim,
                     Tensor& y) override;
  void rope_kv_write(const Tensor& qkv, const Tensor& positions, float theta, KvCache& cache, int layer,
                     const AttentionBatch& batch, Tensor& q) override;
  void paged_attention(const Tensor& q, KvCache& cache, int layer, const AttentionBatch& batch,
                       int q_heads, Tensor& y) override;

  ThreadPool& pool() { return pool_; }
  const Kernels& kernels() const { return kernels_; }

 private:
  ThreadPool pool_;
  const Kernels& kernels_;
};

// The CpuLinear behind a Linear made by a CPU backend; throws if there is none.
const CpuLinear& cpu_linear(const Linear& w, const char* op);

}  // namespace moxin::cpu
