// CpuBackend: construction, memory and weights. Ops live in cpu_ops_*.cpp.
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "backend/cpu/cpu_backend.hpp"
#include "backend/cpu/cpu_backend_impl.hpp"
#include "backend/cpu/cpu_checks.hpp"
#include "backend/cpu/cpu_quant_kernels.hpp"
#include "core/bf16.hpp"
#include "core/check.hpp"
#include "core/large_buffer.hpp"

namespace moxin {

std::unique_ptr<Backend> create_cpu_backend(int threads) {
  return std::make_unique<cpu::CpuBackend>(threads, cpu::best_kernels());
}

namespace cpu {
namespace {

int64_t element_count(const std::vector<int64_t>& shape, const char* what) {
  int64_t n = 1;
  for (int64_t d : shape) {
    MOXIN_CHECK(d >= 0, "[cpu] ", what, ": negative dimension in shape");
    MOXIN_CHECK(d == 0 || n <= std::numeric_limits<int64_t>::max() / d, "[cpu] ", what,
                ": shape too large");
    n *= d;
  }
  return n;
}

// Converts n values of a float dtype to f32.
void to_f32(const void* src, DType dtype, int64_t n, float* out) {
  const auto* half = static_cast<const uint16_t*>(src);
  switch (dtype) {
    case DType::F32:
      std::memcpy(out, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(half[i]);
      return;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(half[i]);
      return;
    case DType::I32: {
      const auto* ints = static_cast<const int32_t*>(src);
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(ints[i]);
      return;
    }
    default:
      fail("[cpu] cannot convert ", dtype_name(dtype), " to F32");
  }
}

std::string shape_text(const std::vector<int64_t>& shape) {
  Tensor t;
  t.shape = shape;
  return t.shape_str();
}

bool is_float_weight(DType t) { return t == DType::BF16 || t == DType::F16 || t == DType::F32; }

// Shape, dtype and byte count of a mapped tensor before anything reads it.
void check_tensor_info(const TensorInfo& t, const char* what) {
  MOXIN_CHECK(is_float_weight(t.dtype), "[cpu] ", what, " '", t.name, "' is ", dtype_name(t.dtype),
              "; the CPU backend reads BF16, F16 or F32");
  const int64_t n = element_count(t.shape, what);
  MOXIN_CHECK(t.nbytes == static_cast<size_t>(n) * dtype_size(t.dtype), "[cpu] ", what, " '",
              t.name, "': ", t.nbytes, " bytes do not match its shape and dtype");
  MOXIN_CHECK(t.data != nullptr || n == 0, "[cpu] ", what, " '", t.name, "' has no data");
}

}  // namespace

CpuBackend::CpuBackend(int threads, const Kernels& kernels) : pool_(threads), kernels_(kernels) {}

std::string CpuBackend::name() const {
  return cat("cpu (", kernels_.name, " kernels, ", quant_gemv_path_name(quant_gemv_path_for(kernels_)),
             " quantized GEMV, ", pool_.size(), " threads)");
}

// --- memory ---

Tensor CpuBackend::empty(const std::vector<int64_t>& shape, DType dtype) {
  Tensor t;
  t.dtype = dtype;
  t.shape = shape;
  const int64_t n = element_count(shape, "empty");
  MOXIN_CHECK(static_cast<uint64_t>(n) <= std::numeric_limits<size_t>::max() / 64, "[cpu] empty: shape too large");
  // Rounded up to whole cache lines (aligned_alloc needs a multiple of the alignment).
  const size_t bytes = (static_cast<size_t>(n) * dtype_size(dtype) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
  MOXIN_CHECK(p != nullptr, "[cpu] out of memory allocating a ", t.shape_str(), " ", dtype_name(dtype),
              " tensor (", bytes, " bytes)");
  t.storage = std::shared_ptr<void>(p, std::free);
  t.data = p;
  return t;
}

Tensor CpuBackend::from_host_f32(const float* data, const std::vector<int64_t>& shape) {
  Tensor t = empty(shape, DType::F32);
  if (t.numel() > 0) std::memcpy(t.data, data, t.nbytes());
  return t;
}

Tensor CpuBackend::from_host_i32(const int32_t* data, const std::vector<int64_t>& shape) {
  Tensor t = empty(shape, DType::I32);
  if (t.numel() > 0) std::memcpy(t.data, data, t.nbytes());
  return t;
}

void CpuBackend::to_host_f32(const Tensor& t, float* out) {
  MOXIN_CHECK(t.data != nullptr || t.numel() == 0, "[cpu] to_host_f32: tensor ", t.shape_str(),
              " has no storage");
  to_f32(t.data, t.dtype, t.numel(), out);
}

namespace {

// Ops run when they are issued on the CPU: the values are final at once.
class CopiedI32 final : public I32Readback {
 public:
  explicit CopiedI32(std::vector<int32_t> values) : values_(std::move(values)) {}
  std::span<const int32_t> wait() override { return values_; }

 private:
  std::vector<int32_t> values_;
};

}  // namespace

std::unique_ptr<I32Readback> CpuBackend::read_i32_async(const Tensor& t) {
  check_dtype(t, DType::I32, "read_i32_async", "t");
  const int32_t* values = t.ptr<int32_t>();
  return std::make_unique<CopiedI32>(std::vector<int32_t>(values, values + t.numel()));
}

// --- weights ---

const CpuLinear& cpu_linear(const Linear& w, const char* op) {
  const auto* prepared = dynamic_cast<const CpuLinear*>(w.impl.get());
  MOXIN_CHECK(prepared != nullptr, "[cpu] ", op,
              ": the weight was not prepared by this CPU backend (call prepare_linear on it)");
  const auto& l = *prepared;
  MOXIN_CHECK(l.weight.rows == w.out_features && l.weight.cols == w.in_features, "[cpu] ", op,
              ": Linear says [", w.out_features, ", ", w.in_features, "] but its weight '", l.name,
              "' is [", l.weight.rows, ", ", l.weight.cols, "]");
  return l;
}

Linear CpuBackend::prepare_linear(const LinearWeight& w) {
  MOXIN_CHECK(w.weight != nullptr, "[cpu] prepare_linear: no weight tensor");
  const TensorInfo& t = *w.weight;
  if (w.bits != 0) return prepare_quantized_linear(w);
  if (w.is_fp8()) return prepare_fp8_linear(w);
  check_tensor_info(t, "weight");
  int64_t out = w.out_features, in = w.in_features;
  if (out == 0 && in == 0 && t.shape.size() == 2) {
    out = t.shape[0];
    in = t.shape[1];
  }
  // A conv weight [O, C, kh, kw] is used as the matrix [O, C * kh * kw].
  MOXIN_CHECK(out > 0 && in > 0 && !t.shape.empty() && t.shape[0] == out &&
                  element_count(t.shape, "weight") == out * in,
              "[cpu] prepare_linear: weight '", t.name, "' is ", shape_text(t.shape), " but the layer is [",
              out, ", ", in, "]");
  auto impl = std::make_shared<CpuLinear>();
  impl->name = t.name;
  impl->weight = WeightView{t.dtype, t.data, out, in, in};
  if (w.bias) {
    check_tensor_info(*w.bias, "bias");
    MOXIN_CHECK(element_count(w.bias->shape, "bias") == out, "[cpu] prepare_linear: bias '", w.bias->name,
                "' is ", shape_text(w.bias->shape), " but weight '", t.name, "' has ", out, " outputs");
    impl->bias.resize(static_cast<size_t>(out));
    to_f32(w.bias->data, w.bias->dtype, out, impl->bias.data());
  }
  Linear l;
  l.out_features = out;
  l.in_features = in;
  l.impl = std::move(impl);
  return l;
}

// Each part is prepared as by prepare_linear (a view into the mapping: no copy, so fusing
// costs no memory) and linear() runs one matmul per part into its column range of y.
Linear CpuBackend::prepare_fused_linear(const std::vector<const LinearWeight*>& parts) {
  MOXIN_CHECK(!parts.empty(), "[cpu] prepare_fused_linear: no parts");
  const auto format = [](const LinearWeight& w) {
    return w.is_fp8() ? std::string("fp8") : w.bits == 0 ? std::string("float") : cat(w.bits, "-bit g", w.group_size);
  };
  auto impl = std::make_shared<CpuLinear>();
  Linear fused;
  for (const LinearWeight* part : parts) {
    MOXIN_CHECK(part != nullptr && part->weight != nullptr, "[cpu] prepare_fused_linear: a part has no weight");
    Linear l = prepare_linear(*part);
    const LinearWeight& first = *parts.front();
    MOXIN_CHECK(part->bits == first.bits && part->group_size == first.group_size && part->is_fp8() == first.is_fp8() &&
                    (impl->parts.empty() || l.in_features == fused.in_features),
                "[cpu] prepare_fused_linear: '", part->weight->name, "' (", format(*part), ", ", l.in_features,
                " inputs) cannot join '", first.weight->name, "' (", format(first), ", ", fused.in_features,
                " inputs): fused parts share in_features and format");
    fused.in_features = l.in_features;
    fused.out_features += l.out_features;
    auto part_impl = std::dynamic_pointer_cast<const CpuLinear>(l.impl);
    impl->name += (impl->parts.empty() ? "" : " + ") + part_impl->name;
    impl->parts.push_back(std::move(part_impl));
  }
  impl->weight = WeightView{impl->parts.front()->weight.dtype, nullptr, fused.out_features, fused.in_features,
                            fused.in_features};
  fused.impl = std::move(impl);
  return fused;
}

Tensor CpuBackend::param(const TensorInfo& t) {
  check_tensor_info(t, "parameter");
  Tensor p = empty(t.shape, DType::F32);
  to_f32(t.data, t.dtype, p.numel(), p.ptr<float>());
  return p;
}

// --- KV cache ---

void CpuKvCache::Free::operator()(std::byte* p) const { free_large(p, bytes); }

CpuKvCache::CpuKvCache(const KvCacheConfig& c)
    : KvCache(c, c.dtype == KvCacheDType::Fp8E4M3 ? DType::F8_E4M3 : DType::F32) {
  MOXIN_CHECK(c.layers > 0 && c.kv_heads > 0 && c.head_dim > 0 && c.block_size > 0 && c.num_blocks > 0,
              "[cpu] KV cache: layers (", c.layers, "), kv_heads (", c.kv_heads, "), head_dim (",
              c.head_dim, "), block_size (", c.block_size, ") and num_blocks (", c.num_blocks,
              ") must all be positive");
  rows_ = static_cast<size_t>(c.num_blocks) * static_cast<size_t>(c.block_size) * static_cast<size_t>(c.kv_heads);
  const size_t values = rows_ * static_cast<size_t>(c.head_dim);
  // An FP8 region ends with one exponent byte per row; regions stay 64-byte aligned.
  region_bytes_ = fp8() ? values + rows_ : values * sizeof(float);
  region_bytes_ = (region_bytes_ + 63) / 64 * 64;
  const size_t total = 2 * static_cast<size_t>(c.layers) * region_bytes_;
  // Untouched zero pages: unused blocks cost no memory (beyond the huge page a touched one shares).
  storage_ = std::unique_ptr<std::byte, Free>(static_cast<std::byte*>(allocate_large(total)), Free{total});
  MOXIN_CHECK(storage_ != nullptr, "[cpu] KV cache: cannot allocate ", static_cast<double>(total) / 1e9,
              " GB; reduce the number of blocks (context length or batch)");
}

std::unique_ptr<KvCache> CpuBackend::create_kv_cache(const KvCacheConfig& c) {
  return std::make_unique<CpuKvCache>(c);
}

}  // namespace cpu
}  // namespace moxin
