#include "backend/cuda/cuda_backend_impl.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/tensor_checks.hpp"
#include "core/bf16.hpp"

namespace moxin::cuda {
namespace {

constexpr int64_t kScratchElems = 32ll << 20;           // 64 MB of bf16 activations
constexpr int64_t kAttentionPartialFloats = 4ll << 20;  // 16 MB of split-K partials
constexpr size_t kStagingBytes = 16u << 20;
// The skinny tensor-core GEMM beat cuBLASLt (with its activation conversion) only on the
// decoder's smallest matrix, [4096 x 4096], at 2..16 rows (57-60% vs 43% of copy at M = 2..8);
// cuBLASLt streams [6144 x 4096] and larger at 65-95% from M = 2 (H200, docs/cuda-notes.md).
constexpr int kSkinnyPreferredRows = 16;
constexpr int64_t kSkinnyPreferredWeights = int64_t{4096} * 4096;

// The whole-tensor element count of a checkpoint tensor, checked against [out, in].
void check_linear_shape(const TensorInfo& t, int64_t out, int64_t in) {
  MOXIN_CHECK(out > 0 && in > 0 && t.numel() == out * in, "[cuda] weight '", t.name, "' in ",
              t.file, " has shape ", t.shape_str(), ", which is not [", out, ", ", in, "]");
}

// Whether environment variable `name` is set to exactly `value` (the A/B switches read at
// construction).
bool env_equals(const char* name, const char* value) {
  const char* set = std::getenv(name);
  return set != nullptr && std::strcmp(set, value) == 0;
}

}  // namespace

DeviceContext::DeviceContext(int ordinal) : device(ordinal) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  MOXIN_CHECK(status == cudaSuccess && count > 0, "[cuda] no usable NVIDIA GPU (",
              cudaGetErrorString(status), "); use --device cpu");
  MOXIN_CHECK(ordinal >= 0 && ordinal < count, "[cuda] GPU ", ordinal, " does not exist: ", count,
              " GPU(s) present (valid: 0..", count - 1, ")");
  MOXIN_CUDA_CHECK(cudaSetDevice(ordinal));
  cudaDeviceProp props{};
  MOXIN_CUDA_CHECK(cudaGetDeviceProperties(&props, ordinal));
  MOXIN_CHECK(props.major >= 9, "[cuda] GPU ", ordinal, " (", props.name,
              ") has compute capability ", props.major, ".", props.minor,
              "; this build targets Hopper (9.0)");
  multiprocessors = props.multiProcessorCount;
  MOXIN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  current = stream;
  // Keep freed blocks in the stream-ordered pool: per-op temporaries then cost no driver call.
  cudaMemPool_t pool = nullptr;
  MOXIN_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, ordinal));
  uint64_t keep = UINT64_MAX;
  MOXIN_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
}

DeviceContext::~DeviceContext() {
  for (cudaStream_t s : branch_streams) {
    cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
  }
  if (stream) {
    cudaStreamSynchronize(stream);
    cudaStreamDestroy(stream);
  }
}

std::shared_ptr<void> device_alloc(const std::shared_ptr<DeviceContext>& context, size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t status = cudaMallocAsync(&p, bytes, context->current);
  MOXIN_CHECK(status == cudaSuccess, "[cuda] cannot allocate ", bytes, " bytes on GPU ",
              context->device, ": ", cudaGetErrorString(status));
  context->allocated_bytes += static_cast<int64_t>(bytes);
  return std::shared_ptr<void>(p, [context, bytes](void* q) {
    cudaFreeAsync(q, context->current);
    context->allocated_bytes -= static_cast<int64_t>(bytes);
  });
}

CudaBackend::CudaBackend(int device_ordinal)
    : context_(std::make_shared<DeviceContext>(device_ordinal)) {
  cudaDeviceProp props{};
  MOXIN_CUDA_CHECK(cudaGetDeviceProperties(&props, device_ordinal));
  name_ = cat("cuda:", device_ordinal, " (", props.name, ")");
  configure_vit_attention();
  configure_paged_attention();
  configure_paged_attention_split();
  configure_paged_attention_mma();
  uploader_ = std::make_unique<WeightUploader>(kStagingBytes);
  scratch_elems_ = kScratchElems;
  lanes_.emplace_back();
  lanes_[0].stream = context_->stream;
  lanes_[0].gemm = std::make_unique<LtGemm>(kGemmWorkspaceBytes);
  lanes_[0].scratch_bf16 = device_alloc(context_, static_cast<size_t>(scratch_elems_) * 2);
  MOXIN_CUDA_CHECK(cudaEventCreateWithFlags(&fork_, cudaEventDisableTiming));
  add_lane();  // the second image encoder's (Vlm::encode_images), ready before any capture
  fp8_tensor_cores_ = !env_equals("MOXIN_CUDA_FP8_TENSOR_CORES", "0");
  e4m3_activations_ = !env_equals("MOXIN_CUDA_E4M3_ACTIVATIONS", "0");
  fused_residual_ = !env_equals("MOXIN_CUDA_FUSE_RESIDUAL", "0");
  fused_rope_ = !env_equals("MOXIN_CUDA_FUSE_ROPE", "0");
  attention_partial_floats_ = kAttentionPartialFloats;
  attention_partial_ = device_alloc(context_, static_cast<size_t>(attention_partial_floats_) * 4);
  attention_counters_ = device_alloc(context_, static_cast<size_t>(kAttentionCounters) * 4);
  MOXIN_CUDA_CHECK(cudaMemsetAsync(attention_counters_.get(), 0,
                                   static_cast<size_t>(kAttentionCounters) * 4, stream()));
}

CudaBackend::~CudaBackend() {
  for (Lane& l : lanes_) {
    cudaStreamSynchronize(l.stream);
    if (l.done) cudaEventDestroy(l.done);
  }
  cudaEventDestroy(fork_);
}

// --- memory ---

Tensor CudaBackend::empty(const std::vector<int64_t>& shape, DType dtype) {
  Tensor t;
  t.device = DeviceKind::CUDA;
  t.dtype = dtype;
  t.shape = shape;
  for (int64_t d : shape)
    MOXIN_CHECK(d >= 0, "[cuda] empty: negative dimension in ", t.shape_str());
  // Per-token E4M3 activations carry their row scales after the codes (Tensor::row_scales).
  const size_t codes_bytes = (t.nbytes() + 255) / 256 * 256;
  const bool scaled_rows = dtype == DType::F8_E4M3;
  t.storage = device_alloc(context_, scaled_rows ? codes_bytes + static_cast<size_t>(t.rows()) * sizeof(float)
                                                 : t.nbytes());
  t.data = t.storage.get();
  if (scaled_rows) t.row_scales = reinterpret_cast<float*>(static_cast<uint8_t*>(t.data) + codes_bytes);
  return t;
}

Tensor CudaBackend::from_host_f32(const float* data, const std::vector<int64_t>& shape) {
  Tensor t = empty(shape, DType::F32);
  if (t.nbytes())
    MOXIN_CUDA_CHECK(cudaMemcpyAsync(t.data, data, t.nbytes(), cudaMemcpyHostToDevice, stream()));
  return t;
}

Tensor CudaBackend::from_host_i32(const int32_t* data, const std::vector<int64_t>& shape) {
  Tensor t = empty(shape, DType::I32);
  if (t.nbytes())
    MOXIN_CUDA_CHECK(cudaMemcpyAsync(t.data, data, t.nbytes(), cudaMemcpyHostToDevice, stream()));
  return t;
}

void CudaBackend::upload_i32(const int32_t* data, Tensor& dst) {
  require(dst, DType::I32, "upload_i32", "dst");
  if (dst.nbytes())
    MOXIN_CUDA_CHECK(cudaMemcpyAsync(dst.data, data, dst.nbytes(), cudaMemcpyHostToDevice, stream()));
}

void CudaBackend::to_host_f32(const Tensor& t, float* out) {
  require_device(t, "to_host_f32", "the tensor");
  const size_t n = static_cast<size_t>(t.numel());
  if (n == 0) return;
  if (t.dtype == DType::F32) {
    MOXIN_CUDA_CHECK(cudaMemcpyAsync(out, t.data, t.nbytes(), cudaMemcpyDeviceToHost, stream()));
    synchronize();
    return;
  }
  MOXIN_CHECK(t.dtype == DType::BF16 || t.dtype == DType::F16 || t.dtype == DType::I32,
              "[cuda] to_host_f32: cannot convert ", dtype_name(t.dtype), " to f32");
  std::vector<uint8_t> raw(t.nbytes());
  MOXIN_CUDA_CHECK(
      cudaMemcpyAsync(raw.data(), t.data, t.nbytes(), cudaMemcpyDeviceToHost, stream()));
  synchronize();
  for (size_t i = 0; i < n; ++i) {
    if (t.dtype == DType::I32) {
      int32_t v;
      std::memcpy(&v, raw.data() + 4 * i, 4);
      out[i] = static_cast<float>(v);
    } else {
      uint16_t h;
      std::memcpy(&h, raw.data() + 2 * i, 2);
      out[i] = t.dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
    }
  }
}

void CudaBackend::synchronize() { MOXIN_CUDA_CHECK(cudaStreamSynchronize(stream())); }

double CudaBackend::measure_bandwidth_gbps(size_t bytes, int passes) {
  MOXIN_CHECK(bytes >= (size_t{64} << 20) && passes >= 1, "[cuda] measure_bandwidth_gbps: ", bytes,
              " bytes (at least 64 MiB, beyond the L2), ", passes, " passes (at least 1)");
  const auto src = device_alloc(context_, bytes), dst = device_alloc(context_, bytes);
  MOXIN_CUDA_CHECK(cudaMemsetAsync(src.get(), 0x5a, bytes, stream()));
  cudaEvent_t start = nullptr, stop = nullptr;
  MOXIN_CUDA_CHECK(cudaEventCreate(&start));
  MOXIN_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> ms;
  for (int i = 0; i < passes + 2; ++i) {
    MOXIN_CUDA_CHECK(cudaEventRecord(start, stream()));
    MOXIN_CUDA_CHECK(
        cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, stream()));
    MOXIN_CUDA_CHECK(cudaEventRecord(stop, stream()));
    MOXIN_CUDA_CHECK(cudaEventSynchronize(stop));
    float t = 0;
    MOXIN_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
    if (i >= 2) ms.push_back(t);  // the first copies warm up clocks and the pool
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return 2.0 * static_cast<double>(bytes) / (ms[ms.size() / 2] * 1e6);
}

size_t CudaBackend::device_memory_used() const {
  return static_cast<size_t>(context_->allocated_bytes.load()) + lanes_.size() * kGemmWorkspaceBytes;
}

// --- weights ---

Linear CudaBackend::prepare_linear(const LinearWeight& w) { return prepare_fused_linear({&w}); }

// bf16 parts go into one [sum of out, in] matrix at row offsets (and their biases into one
// vector, zero where a part has none), so the fused Linear is an ordinary CudaLinear.
Linear CudaBackend::prepare_fused_linear(const std::vector<const LinearWeight*>& parts) {
  MOXIN_CHECK(!parts.empty(), "[cuda] prepare_fused_linear: no parts");
  for (const LinearWeight* part : parts)
    MOXIN_CHECK(part != nullptr && part->weight != nullptr,
                "[cuda] prepare_linear: no weight tensor");
  const LinearWeight& first = *parts.front();
  if (first.bits != 0) return prepare_quantized_linear(parts);
  if (first.is_fp8()) return prepare_fp8_linear(parts);
  const int64_t in = first.in_features;
  int64_t out = 0;
  bool any_bias = false;
  for (const LinearWeight* part : parts) {
    MOXIN_CHECK(part->bits == 0 && !part->is_fp8() && part->in_features == in, "[cuda] prepare_fused_linear: '",
                part->weight->name, "' (",
                part->is_fp8() ? std::string("fp8") : part->bits == 0 ? std::string("float") : cat(part->bits, "-bit"),
                ", ", part->in_features, " inputs) cannot join '", first.weight->name,
                "' (float, ", in, " inputs): fused parts share in_features and format");
    check_linear_shape(*part->weight, part->out_features, part->in_features);
    if (part->bias)
      MOXIN_CHECK(part->bias->numel() == part->out_features, "[cuda] bias '", part->bias->name,
                  "' in ", part->bias->file, " has shape ", part->bias->shape_str(), ", expected [",
                  part->out_features, "]");
    out += part->out_features;
    any_bias = any_bias || part->bias != nullptr;
  }
  const bool biases_bf16 = std::all_of(parts.begin(), parts.end(), [](const LinearWeight* part) {
    return part->bias == nullptr || part->bias->dtype == DType::BF16;
  });
  auto impl = std::make_shared<CudaLinear>();
  impl->weight = device_alloc(context_, static_cast<size_t>(out * in) * 2);
  if (any_bias) {
    impl->bias = device_alloc(context_, static_cast<size_t>(out) * 4);
    MOXIN_CUDA_CHECK(cudaMemsetAsync(impl->bias.get(), 0, static_cast<size_t>(out) * 4, stream()));
    if (biases_bf16) {
      impl->bias_bf16 = device_alloc(context_, static_cast<size_t>(out) * 2);
      MOXIN_CUDA_CHECK(cudaMemsetAsync(impl->bias_bf16.get(), 0, static_cast<size_t>(out) * 2, stream()));
    }
  }
  int64_t row = 0;
  for (const LinearWeight* part : parts) {
    uploader_->upload(*part->weight, DType::BF16,
                      static_cast<uint8_t*>(impl->weight.get()) + static_cast<size_t>(row * in) * 2,
                      stream());
    if (part->bias) {
      uploader_->upload(*part->bias, DType::F32,
                        static_cast<uint8_t*>(impl->bias.get()) + static_cast<size_t>(row) * 4,
                        stream());
      if (impl->bias_bf16)
        uploader_->upload(*part->bias, DType::BF16,
                          static_cast<uint8_t*>(impl->bias_bf16.get()) + static_cast<size_t>(row) * 2, stream());
    }
    row += part->out_features;
  }
  Linear fused;
  fused.out_features = out;
  fused.in_features = in;
  fused.impl = std::move(impl);
  return fused;
}

Tensor CudaBackend::param(const TensorInfo& t) {
  Tensor out = empty(t.shape, DType::F32);
  if (out.numel()) uploader_->upload(t, DType::F32, out.data, stream());
  return out;
}

std::unique_ptr<KvCache> CudaBackend::create_kv_cache(const KvCacheConfig& c) {
  MOXIN_CHECK(
      c.layers > 0 && c.kv_heads > 0 && c.head_dim > 0 && c.block_size > 0 && c.num_blocks > 0,
      "[cuda] create_kv_cache: every dimension must be positive (layers ", c.layers, ", kv_heads ",
      c.kv_heads, ", head_dim ", c.head_dim, ", block_size ", c.block_size, ", num_blocks ",
      c.num_blocks, ")");
  MOXIN_CHECK(c.head_dim <= kMaxHeadDim, "[cuda] create_kv_cache: head_dim ", c.head_dim, " > ",
              kMaxHeadDim, " is not supported");
  const size_t bytes = CudaKvCache::layer_bytes(c) * static_cast<size_t>(c.layers);
  auto storage = device_alloc(context_, bytes);
  // Never-written slots must hold finite numbers: a masked-out key still meets a 0 weight
  // (FP8: code 0 with exponent 0 is 0).
  MOXIN_CUDA_CHECK(cudaMemsetAsync(storage.get(), 0, bytes, stream()));
  return std::make_unique<CudaKvCache>(c, std::move(storage));
}

// --- ops ---

template <class Fill>
void CudaBackend::gemm_rows(int64_t rows, const CudaLinear& w, int64_t n, int64_t k, float* y,
                            Fill fill) {
  MOXIN_CHECK(k <= scratch_elems_, "[cuda] linear: in_features ", k, " exceeds the scratch buffer");
  const int64_t chunk = scratch_elems_ / k;
  auto* scratch = static_cast<bf16_bits*>(lane().scratch_bf16.get());
  for (int64_t first = 0; first < rows; first += chunk) {
    const int64_t count = std::min(chunk, rows - first);
    fill(first, count, scratch);
    lane().gemm->run(scratch, static_cast<const bf16_bits*>(w.weight.get()),
               static_cast<const float*>(w.bias.get()), y + first * n, static_cast<int>(count),
               static_cast<int>(n), static_cast<int>(k), stream());
  }
}

CudaBackend::DecodeKernel CudaBackend::bf16_decode_kernel(int64_t m, int64_t n, int64_t k,
                                                          bool skinny_usable) const {
  if (linear_path_ == CudaLinearPath::Lt) return DecodeKernel::Gemm;
  const bool use_skinny =
      linear_path_ == CudaLinearPath::Skinny ||
      (linear_path_ == CudaLinearPath::Auto && m >= 2 && m <= kSkinnyPreferredRows &&
       n * k <= kSkinnyPreferredWeights);
  if (skinny_usable && use_skinny) return DecodeKernel::Skinny;
  // The GEMV reads f32 activations: best at one row; from two rows on, cuBLASLt's bf16 GEMM
  // streams the large matrices faster (H200 run 1 of session 3, docs/cuda-notes.md).
  if (m <= kGemvMaxRows && (m == 1 || !skinny_usable || linear_path_ == CudaLinearPath::Gemv))
    return DecodeKernel::Gemv;
  return DecodeKernel::Gemm;
}

// The quantized GEMV and tensor-core kernels read inputs 64 at a time; a linear whose input
// features are not a multiple of 64 (possible with groups of 32) dequantizes for cuBLASLt at
// every row count.
static bool quant_decode_kernels_fit(const CudaLinear& lw) { return lw.quant.bits != 0 && lw.quant.cols % 64 == 0; }

// Activation tensors are 256-byte aligned, so only the shape decides whether skinny can run.
CudaBackend::DecodeKernel CudaBackend::bf16_decode_kernel_for_shape(int64_t m, int64_t n, int64_t k) const {
  return bf16_decode_kernel(m, n, k, m <= kSkinnyMaxRows && k % 8 == 0);
}

bool CudaBackend::takes_bf16_activations(const CudaLinear& lw, int64_t m, int64_t n, int64_t k) const {
  // FP8 rows past the decode kernels: the FP8 tensor cores quantize bf16-rounded activations and
  // the codes-as-bf16 GEMM multiplies bf16 ones, so a bf16 input costs nothing and halves the bytes.
  if (lw.is_fp8()) return m > kFp8GemvMaxRows && !fp8_decode_mma(m, k);
  if (lw.quant.bits != 0) return m > kQuantMmaMaxRows || !quant_decode_kernels_fit(lw);
  return bf16_decode_kernel_for_shape(m, n, k) == DecodeKernel::Gemm;
}

bool CudaBackend::takes_e4m3_activations(const CudaLinear& lw, int64_t m, int64_t n, int64_t k) const {
  if (!e4m3_activations_ || !lw.is_fp8() || !fp8_on_tensor_cores(m) || m > INT32_MAX || k % 16 != 0 || n % 8 != 0)
    return false;
  LtGemm& gemm = *lanes_.front().gemm;
  const int rows = static_cast<int>(m), outputs = static_cast<int>(n), inputs = static_cast<int>(k);
  return gemm.fp8_usable(rows, outputs, inputs, false) && gemm.fp8_usable(rows, outputs, inputs, true);
}

DType CudaBackend::linear_input_dtype(const Linear& w, int64_t rows) const {
  const CudaLinear& lw = cuda_linear(w, "linear_input_dtype");
  if (takes_e4m3_activations(lw, rows, w.out_features, w.in_features)) return DType::F8_E4M3;
  return takes_bf16_activations(lw, rows, w.out_features, w.in_features) ? DType::BF16 : DType::F32;
}

bool CudaBackend::writes_bf16_output(const CudaLinear& lw, int64_t m, int64_t n, int64_t k) const {
  return m > 0 && lw.quant.bits == 0 && !lw.is_fp8() && (lw.bias == nullptr || lw.bias_bf16 != nullptr) &&
         bf16_decode_kernel_for_shape(m, n, k) == DecodeKernel::Gemm &&
         lanes_.front().gemm->offers_bf16_out(static_cast<int>(m), static_cast<int>(n), static_cast<int>(k),
                                              lw.weight.get(), lw.bias != nullptr);
}

DType CudaBackend::vit_attention_input_dtype(const Linear& qkv, int64_t rows) const {
  return attention_path_ != CudaAttentionPath::TiledF32 && writes_bf16_output(cuda_linear(qkv, "vit_attention_input_dtype"), rows,
                                                                      qkv.out_features, qkv.in_features)
             ? DType::BF16
             : DType::F32;
}

void CudaBackend::linear(const Tensor& x, const Linear& w, Tensor& y) {
  const CudaLinear& lw = cuda_linear(w, "linear");
  const int64_t m = x.rows();
  const int64_t k = w.in_features, n = w.out_features;
  require_shape(x, m, k, "linear", "x");
  require_shape(y, m, n, "linear", "y");
  if (y.dtype == DType::BF16) {  // for an op that reads bf16 (Backend::vit_attention_input_dtype)
    require(x, DType::BF16, "linear", "x");
    MOXIN_CHECK(writes_bf16_output(lw, m, n, k), "[cuda] linear: y is bf16, but this [", n, " x ", k,
                "] linear writes f32 at ", m, " rows (see Backend::vit_attention_input_dtype)");
    lane().gemm->run_bf16_out(data_of<const bf16_bits>(x), static_cast<const bf16_bits*>(lw.weight.get()),
                              static_cast<const bf16_bits*>(lw.bias_bf16.get()), data_of<bf16_bits>(y), static_cast<int>(m),
                              static_cast<int>(n), static_cast<int>(k), stream());
    return;
  }
  require(y, DType::F32, "linear", "y");
  if (x.dtype == DType::F8_E4M3) {  // from an op that wrote what the FP8 tensor cores multiply
    const InputActivations xa = require_input_activations(x, "linear", "x");
    MOXIN_CHECK(takes_e4m3_activations(lw, m, n, k), "[cuda] linear: x is F8_E4M3, but this [", n, " x ", k,
                "] linear does not multiply per-token E4M3 activations at ", m,
                " rows (see Backend::linear_input_dtype)");
    MOXIN_CHECK(fp8_tensor_core_rows(xa, m, lw, {data_of<float>(y), nullptr}) == m,
                "[cuda] linear: cuBLASLt ran no FP8 GEMM for [", m, " x ", k, "] x [", n, " x ", k, "]");
    return;
  }
  const bool quantized = lw.quant.bits != 0 || lw.is_fp8();
  if (x.dtype == DType::BF16) {  // from an op that wrote what the GEMM multiplies (no conversion)
    require(x, DType::BF16, "linear", "x");
    MOXIN_CHECK(takes_bf16_activations(lw, m, n, k), "[cuda] linear: x is bf16, but this [", n, " x ", k,
                "] linear multiplies f32 activations at ", m, " rows (see Backend::linear_input_dtype)");
    if (m == 0) return;
    const InputActivations xa{nullptr, data_of<const bf16_bits>(x)};
    const int64_t done = lw.is_fp8() && fp8_on_tensor_cores(m) ? fp8_tensor_core_rows(xa, m, lw, {data_of<float>(y), nullptr}) : 0;
    if (done == m) return;
    float* yd = data_of<float>(y) + done * n;
    const CudaLinear& dense = quantized ? dequantized(lw) : lw;
    lane().gemm->run(xa.rows_from(done, k).bf16, static_cast<const bf16_bits*>(dense.weight.get()),
                     static_cast<const float*>(dense.bias.get()), yd, static_cast<int>(m - done), static_cast<int>(n),
                     static_cast<int>(k), stream());
    if (lw.is_fp8()) scale_rows_columns(yd, nullptr, lw.fp8.scales, m - done, n, stream());
    return;
  }
  require(x, DType::F32, "linear", "x");
  if (m == 0) return;
  const float* xd = data_of<const float>(x);
  if (lw.is_fp8() && (m <= kFp8GemvMaxRows || fp8_decode_mma(m, k))) {
    fp8_linear_decode(xd, m, lw, data_of<float>(y));
    return;
  }
  if (quant_decode_kernels_fit(lw) && m <= kQuantMmaMaxRows) {
    quantized_linear_decode(xd, m, lw, data_of<float>(y));
    return;
  }
  if (!quantized) {
    const auto* wd = static_cast<const bf16_bits*>(lw.weight.get());
    const auto* bias = static_cast<const float*>(lw.bias.get());
    const int rows = static_cast<int>(m);
    switch (bf16_decode_kernel(m, n, k, skinny_gemm_usable(xd, wd, rows, static_cast<int>(k)))) {
      case DecodeKernel::Skinny:
        skinny_gemm_bf16(xd, rows, wd, bias, data_of<float>(y), static_cast<int>(n), static_cast<int>(k),
                         stream());
        return;
      case DecodeKernel::Gemv:
        gemv_bf16(xd, rows, wd, bias, data_of<float>(y), static_cast<int>(n), static_cast<int>(k), stream());
        return;
      case DecodeKernel::Gemm:
        break;
    }
  }
  // FP8 weights: the leading rows the FP8 tensor cores take (all, unless cuBLASLt lacks an
  // algorithm for a chunk's shape); the rest multiply the codes as bf16, then the scales.
  const int64_t done =
      lw.is_fp8() && fp8_on_tensor_cores(m) ? fp8_tensor_core_rows({xd, nullptr}, m, lw, {data_of<float>(y), nullptr}) : 0;
  if (done == m) return;
  float* yd = data_of<float>(y) + done * n;
  gemm_rows(m - done, quantized ? dequantized(lw) : lw, n, k, yd, [&](int64_t first, int64_t count, bf16_bits* a) {
    activations_to_bf16(xd + (done + first) * k, a, count * k, stream());
  });
  if (lw.is_fp8()) scale_rows_columns(yd, nullptr, lw.fp8.scales, m - done, n, stream());
}

void CudaBackend::patch_embed(const Tensor& images, const Linear& w, int patch, Tensor& y) {
  const CudaLinear& lw = cuda_linear(w, "patch_embed");
  MOXIN_CHECK(lw.quant.bits == 0 && !lw.is_fp8(), "[cuda] patch_embed: quantized weights are not supported");
  require(images, DType::F32, "patch_embed", "images");
  require(y, DType::F32, "patch_embed", "y");
  MOXIN_CHECK(images.shape.size() == 4 && images.shape[3] == 3 && patch > 0 &&
                  images.shape[1] % patch == 0 && images.shape[2] % patch == 0,
              "[cuda] patch_embed: images ", images.shape_str(),
              " must be [B, H, W, 3] with H and W multiples of patch ", patch);
  MOXIN_CHECK(w.in_features == 3 * patch * patch, "[cuda] patch_embed: weight in_features ",
              w.in_features, " != 3 * ", patch, " * ", patch);
  const int64_t batch = images.shape[0];
  const int height = static_cast<int>(images.shape[1]);
  const int width = static_cast<int>(images.shape[2]);
  const int64_t rows = batch * (height / patch) * (width / patch);
  require_shape(y, rows, w.out_features, "patch_embed", "y");
  const float* img = data_of<const float>(images);
  gemm_rows(rows, lw, w.out_features, w.in_features, data_of<float>(y),
            [&](int64_t first, int64_t count, bf16_bits* a) {
              im2col_bf16(img, height, width, patch, first, count, a, stream());
            });
}

void CudaBackend::layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps,
                             Tensor& y) {
  require_f32("layer_norm", {&x, &w, &b});
  const Activations out = require_activations(y, "layer_norm", "y");
  const int64_t cols = x.cols();
  MOXIN_CHECK(w.numel() == cols && b.numel() == cols, "[cuda] layer_norm: weight ", w.shape_str(),
              " / bias ", b.shape_str(), " do not match ", cols, " columns");
  require_shape(y, x.rows(), cols, "layer_norm", "y");
  MOXIN_CHECK(y.dtype == DType::F32 || y.data != x.data, "[cuda] layer_norm: a bf16 y must not be x");
  cuda::layer_norm(data_of<const float>(x), data_of<const float>(w), data_of<const float>(b), eps, out,
                   x.rows(), cols, stream());
}

void CudaBackend::add_layer_norm(Tensor& x, const Tensor& y, const Tensor* scale, const Tensor& w, const Tensor& b,
                                 float eps, Tensor& out) {
  require_f32("add_layer_norm", {&x, &y, &w, &b});
  const Activations normed = require_activations(out, "add_layer_norm", "out");
  const int64_t rows = x.rows(), cols = x.cols();
  MOXIN_CHECK(w.numel() == cols && b.numel() == cols, "[cuda] add_layer_norm: weight ", w.shape_str(), " / bias ",
              b.shape_str(), " do not match ", cols, " columns");
  require_shape(y, rows, cols, "add_layer_norm", "y");
  require_shape(out, rows, cols, "add_layer_norm", "out");
  if (scale != nullptr) {
    require(*scale, DType::F32, "add_layer_norm", "scale");
    MOXIN_CHECK(scale->numel() == cols, "[cuda] add_layer_norm: scale ", scale->shape_str(), " does not match ",
                cols, " columns");
  }
  MOXIN_CHECK(out.data != x.data && out.data != y.data, "[cuda] add_layer_norm: out must not be x or y");
  cuda::add_layer_norm(data_of<float>(x), data_of<const float>(y), scale ? data_of<const float>(*scale) : nullptr,
                       data_of<const float>(w), data_of<const float>(b), eps, normed, rows, cols, stream());
}

void CudaBackend::rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& y) {
  require_f32("rms_norm", {&x, &w});
  const Activations out = require_activations(y, "rms_norm", "y", true);
  const int64_t cols = x.cols();
  MOXIN_CHECK(w.numel() == cols, "[cuda] rms_norm: weight ", w.shape_str(), " does not match ",
              cols, " columns");
  require_shape(y, x.rows(), cols, "rms_norm", "y");
  MOXIN_CHECK(y.dtype == DType::F32 || y.data != x.data, "[cuda] rms_norm: a bf16 y must not be x");
  cuda::rms_norm(data_of<const float>(x), data_of<const float>(w), eps, out, x.rows(), cols, stream());
}

void CudaBackend::add_rms_norm(Tensor& x, const Tensor& y, const Tensor& w, float eps,
                               Tensor& out) {
  require_f32("add_rms_norm", {&x, &y, &w});
  const Activations normed = require_activations(out, "add_rms_norm", "out", true);
  const int64_t rows = x.rows(), cols = x.cols();
  MOXIN_CHECK(w.numel() == cols, "[cuda] add_rms_norm: weight ", w.shape_str(), " does not match ",
              cols, " columns");
  require_shape(y, rows, cols, "add_rms_norm", "y");
  require_shape(out, rows, cols, "add_rms_norm", "out");
  MOXIN_CHECK(out.data != x.data && out.data != y.data,
              "[cuda] add_rms_norm: out must not be x or y");
  cuda::add_rms_norm(data_of<float>(x), data_of<const float>(y), data_of<const float>(w), eps, normed, rows,
                     cols, stream());
}

void CudaBackend::gelu_erf(const Tensor& x, Tensor& y) {
  require(x, DType::F32, "gelu_erf", "x");
  const Activations out = require_activations(y, "gelu_erf", "y");
  MOXIN_CHECK(x.numel() == y.numel(), "[cuda] gelu_erf: x is ", x.shape_str(), " but y is ", y.shape_str());
  cuda::gelu_erf(data_of<const float>(x), out, x.numel(), stream());
}

void CudaBackend::swiglu(const Tensor& gate_up, Tensor& y) {
  require(gate_up, DType::F32, "swiglu", "gate_up");
  const Activations out = require_activations(y, "swiglu", "y", true);
  require_shape(gate_up, y.rows(), 2 * y.cols(), "swiglu", "gate_up");
  MOXIN_CHECK(gate_up.data != y.data || y.numel() == 0, "[cuda] swiglu: y must not be gate_up");
  cuda::swiglu(data_of<const float>(gate_up), out, y.rows(), y.cols(), stream());
}

void CudaBackend::linear_swiglu(const Tensor& x, const Linear& w, Tensor& gate_up, Tensor& y) {
  const CudaLinear& lw = cuda_linear(w, "linear_swiglu");
  const int64_t m = x.rows(), k = w.in_features, n = w.out_features;
  const bool fusable = lw.quant.bits == 0 && !lw.is_fp8() && x.dtype == DType::F32 && y.dtype == DType::F32 &&
                       n % 2 == 0 && m >= 1 && m <= kGemvMaxRows;
  if (fusable) {
    require(x, DType::F32, "linear_swiglu", "x");
    require(y, DType::F32, "linear_swiglu", "y");
    require_shape(x, m, k, "linear_swiglu", "x");
    require_shape(y, m, n / 2, "linear_swiglu", "y");
    require_shape(gate_up, m, n, "linear_swiglu", "gate_up");  // unused here, as the unfused path needs it
    const float* xd = data_of<const float>(x);
    const auto* wd = static_cast<const bf16_bits*>(lw.weight.get());
    const int rows = static_cast<int>(m), inputs = static_cast<int>(k);
    // Fused where the unfused linear would run the GEMV (one pass, no gate | up round trip).
    if (gemv_bf16_swiglu_usable(xd, wd, rows, inputs) &&
        bf16_decode_kernel(m, n, k, skinny_gemm_usable(xd, wd, rows, inputs)) == DecodeKernel::Gemv) {
      gemv_bf16_swiglu(xd, rows, wd, static_cast<const float*>(lw.bias.get()), data_of<float>(y),
                       static_cast<int>(n / 2), inputs, stream());
      return;
    }
  }
  // One activation row by 4/8-bit codes: the swiglu in the GEMV's epilogue (a kernel and its
  // boundary fewer per layer of a quantized decoder, the same bits).
  if (lw.quant.bits != 0 && lw.bias == nullptr && m == 1 && x.dtype == DType::F32 && y.dtype == DType::F32 &&
      quant_gemv_swiglu_usable(data_of<const float>(x), lw.quant)) {
    require_shape(x, m, k, "linear_swiglu", "x");
    require_shape(y, m, n / 2, "linear_swiglu", "y");
    require_shape(gate_up, m, n, "linear_swiglu", "gate_up");  // unused here, as the unfused path needs it
    quant_gemv_swiglu(data_of<const float>(x), lw.quant, data_of<float>(y), stream());
    return;
  }
  // FP8 rows on the FP8 tensor cores: gate | up stays as the codes' products (in bf16) and the
  // swiglu applies the token and channel scales as it reads them (no scale pass over the layer's
  // largest activation). Rows cuBLASLt has no algorithm for go the unfused way.
  if (lw.is_fp8() && fp8_on_tensor_cores(m) && n % 2 == 0) {
    require_shape(x, m, k, "linear_swiglu", "x");
    require(gate_up, DType::F32, "linear_swiglu", "gate_up");
    require_shape(gate_up, m, n, "linear_swiglu", "gate_up");
    require_shape(y, m, n / 2, "linear_swiglu", "y");
    const InputActivations xa = require_input_activations(x, "linear_swiglu", "x");
    MOXIN_CHECK(xa.e4m3_codes == nullptr || takes_e4m3_activations(lw, m, n, k),
                "[cuda] linear_swiglu: x is F8_E4M3, but this [", n, " x ", k,
                "] linear does not multiply per-token E4M3 activations at ", m,
                " rows (see Backend::linear_input_dtype)");
    const int64_t done = fp8_tensor_core_swiglu_rows(xa, m, lw, data_of<float>(gate_up),
                                                     require_activations(y, "linear_swiglu", "y", true));
    if (done == m) return;
    MOXIN_CHECK(xa.e4m3_codes == nullptr, "[cuda] linear_swiglu: cuBLASLt ran no FP8 GEMM for [", m, " x ", k, "] x [",
                n, " x ", k, "]");
    Tensor rest_x = x.rows_view(done, m - done), rest_gate_up = gate_up.rows_view(done, m - done);
    Tensor rest_y = y.rows_view(done, m - done);
    Backend::linear_swiglu(rest_x, w, rest_gate_up, rest_y);
    return;
  }
  // At GEMM row counts (prefill) cuBLASLt writes gate | up as bf16 into gate_up's memory: the
  // largest activation of a layer ([rows, 2 x 14336]) crosses memory at half the bytes, rounded
  // as the down projection's input is rounded anyway (and as PyTorch's bf16 rounds it).
  if (x.dtype == DType::BF16 && lw.bias == nullptr && !lw.is_fp8() && n % 2 == 0 && m > 0) {
    require_shape(x, m, k, "linear_swiglu", "x");
    require(gate_up, DType::F32, "linear_swiglu", "gate_up");
    require_shape(gate_up, m, n, "linear_swiglu", "gate_up");
    require_shape(y, m, n / 2, "linear_swiglu", "y");
    MOXIN_CHECK(takes_bf16_activations(lw, m, n, k), "[cuda] linear_swiglu: x is bf16, but this [", n, " x ", k,
                "] linear multiplies f32 activations at ", m, " rows (see Backend::linear_input_dtype)");
    const Activations out = require_activations(y, "linear_swiglu", "y", true);
    const CudaLinear& dense = lw.quant.bits != 0 ? dequantized(lw) : lw;
    auto* gu = static_cast<bf16_bits*>(gate_up.data);
    lane().gemm->run_bf16_out(data_of<const bf16_bits>(x), static_cast<const bf16_bits*>(dense.weight.get()), nullptr, gu,
                              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), stream());
    swiglu_bf16_input(gu, out, m, n / 2, stream());
    return;
  }
  Backend::linear_swiglu(x, w, gate_up, y);
}

void CudaBackend::add(Tensor& x, const Tensor& y) {
  require(x, DType::F32, "add", "x");
  require(y, DType::F32, "add", "y");
  MOXIN_CHECK(x.numel() == y.numel(), "[cuda] add: ", x.shape_str(), " += ", y.shape_str());
  cuda::add(data_of<float>(x), data_of<const float>(y), x.numel(), stream());
}

void CudaBackend::add_scaled(Tensor& x, const Tensor& y, const Tensor& scale) {
  require_f32("add_scaled", {&x, &y, &scale});
  MOXIN_CHECK(x.numel() == y.numel() && scale.numel() == x.cols(), "[cuda] add_scaled: x ",
              x.shape_str(), ", y ", y.shape_str(), ", scale ", scale.shape_str());
  cuda::add_scaled(data_of<float>(x), data_of<const float>(y), data_of<const float>(scale),
                   x.rows(), x.cols(), stream());
}

void CudaBackend::add_rows_cyclic(Tensor& x, const Tensor& table) {
  require(x, DType::F32, "add_rows_cyclic", "x");
  require(table, DType::F32, "add_rows_cyclic", "table");
  MOXIN_CHECK(table.cols() == x.cols() && table.rows() > 0, "[cuda] add_rows_cyclic: table ",
              table.shape_str(), " does not match x ", x.shape_str());
  cuda::add_rows_cyclic(data_of<float>(x), data_of<const float>(table), x.rows(), x.cols(),
                        table.rows(), stream());
}

void CudaBackend::copy_rows(const Tensor& src, Tensor& dst, int64_t dst_row) {
  require_device(src, "copy_rows", "src");
  require_device(dst, "copy_rows", "dst");
  MOXIN_CHECK(src.dtype == dst.dtype && src.cols() == dst.cols() && dst_row >= 0 &&
                  dst_row + src.rows() <= dst.rows(),
              "[cuda] copy_rows: ", src.shape_str(), " ", dtype_name(src.dtype), " into rows ",
              dst_row, ".. of ", dst.shape_str(), " ", dtype_name(dst.dtype));
  if (src.nbytes() == 0) return;
  auto* d = static_cast<uint8_t*>(dst.data) +
            static_cast<size_t>(dst_row * dst.cols()) * dtype_size(dst.dtype);
  MOXIN_CUDA_CHECK(cudaMemcpyAsync(d, src.data, src.nbytes(), cudaMemcpyDeviceToDevice, stream()));
}

void CudaBackend::copy_cols(const Tensor& src, Tensor& dst, int64_t col_offset) {
  require_device(src, "copy_cols", "src");
  require_device(dst, "copy_cols", "dst");
  MOXIN_CHECK(src.dtype == dst.dtype && src.rows() == dst.rows() && col_offset >= 0 &&
                  col_offset + src.cols() <= dst.cols(),
              "[cuda] copy_cols: ", src.shape_str(), " ", dtype_name(src.dtype), " into columns ",
              col_offset, ".. of ", dst.shape_str(), " ", dtype_name(dst.dtype));
  if (src.nbytes() == 0) return;
  const size_t es = dtype_size(src.dtype);
  MOXIN_CUDA_CHECK(cudaMemcpy2DAsync(static_cast<uint8_t*>(dst.data) + col_offset * es,
                                     dst.cols() * es, src.data, src.cols() * es, src.cols() * es,
                                     src.rows(), cudaMemcpyDeviceToDevice, stream()));
}

void CudaBackend::gather_rows(const Tensor& x, const Tensor& rows, Tensor& y) {
  require(x, DType::F32, "gather_rows", "x");
  require(rows, DType::I32, "gather_rows", "rows");
  require(y, DType::F32, "gather_rows", "y");
  require_shape(y, rows.numel(), x.cols(), "gather_rows", "y");
  cuda::gather_rows(data_of<const float>(x), x.rows(), x.cols(), data_of<const int32_t>(rows),
                    rows.numel(), data_of<float>(y), stream());
}

void CudaBackend::embedding(const Tensor& ids, const Linear& table, Tensor& y, const DrawnTokens& from) {
  const CudaLinear& lw = cuda_linear(table, "embedding");
  MOXIN_CHECK(lw.quant.bits == 0 && !lw.is_fp8(),
              "[cuda] embedding: quantized tables are not supported (embeddings stay bf16)");
  require(ids, DType::I32, "embedding", "ids");
  require(y, DType::F32, "embedding", "y");
  require_shape(y, ids.numel(), table.in_features, "embedding", "y");
  const int32_t* sources = nullptr;
  const int32_t* drawn = nullptr;
  if (from.sources) {
    MOXIN_CHECK(from.drawn != nullptr, "[cuda] embedding: drawn-token sources without the drawn tokens");
    require(*from.sources, DType::I32, "embedding", "sources");
    require(*from.drawn, DType::I32, "embedding", "drawn");
    MOXIN_CHECK(from.sources->numel() == ids.numel(), "[cuda] embedding: ", from.sources->numel(),
                " drawn-token sources for ", ids.numel(), " ids");
    sources = data_of<const int32_t>(*from.sources);
    drawn = data_of<const int32_t>(*from.drawn);
  }
  cuda::embedding(data_of<const int32_t>(ids), sources, drawn, ids.numel(),
                  static_cast<const bf16_bits*>(lw.weight.get()), table.out_features,
                  table.in_features, data_of<float>(y), stream());
}

void CudaBackend::vit_attention(const Tensor& qkv, int batch, int tokens, int heads, int head_dim,
                                Tensor& y) {
  const bool tensor_cores = attention_path_ != CudaAttentionPath::TiledF32;
  if (qkv.dtype == DType::BF16)
    MOXIN_CHECK(tensor_cores, "[cuda] vit_attention: a bf16 qkv needs the tensor-core path (the f32 one takes f32; "
                              "see Backend::vit_attention_input_dtype)");
  else
    require(qkv, DType::F32, "vit_attention", "qkv");
  const Activations out = require_activations(y, "vit_attention", "y");
  MOXIN_CHECK(batch >= 0 && tokens >= 0 && heads > 0 && head_dim > 0 && head_dim <= kMaxHeadDim,
              "[cuda] vit_attention: batch ", batch, ", tokens ", tokens, ", heads ", heads,
              ", head_dim ", head_dim, " (1..", kMaxHeadDim, ")");
  const int64_t rows = int64_t{batch} * tokens;
  const int64_t width = int64_t{heads} * head_dim;
  require_shape(qkv, rows, 3 * width, "vit_attention", "qkv");
  require_shape(y, rows, width, "vit_attention", "y");
  const bool bf16_in = qkv.dtype == DType::BF16;
  cuda::vit_attention(bf16_in ? nullptr : data_of<const float>(qkv), bf16_in ? data_of<const bf16_bits>(qkv) : nullptr,
                      batch, tokens, heads, head_dim, tensor_cores, out, stream());
}

CudaBackend& cuda_backend_of(Backend& backend, const char* op) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  MOXIN_CHECK(cuda != nullptr, "[cuda] ", op, ": ", backend.name(), " is not a CUDA backend");
  return *cuda;
}

}  // namespace moxin::cuda

namespace moxin {

std::unique_ptr<Backend> create_cuda_backend(int device_ordinal) {
  return std::make_unique<cuda::CudaBackend>(device_ordinal);
}

void set_cuda_linear_path(Backend& backend, CudaLinearPath path) {
  cuda::cuda_backend_of(backend, "set_cuda_linear_path").set_linear_path(path);
}

}  // namespace moxin
