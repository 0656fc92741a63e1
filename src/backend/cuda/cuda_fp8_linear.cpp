// FP8 E4M3 linears on the GPU (docs/model.md section 5): upload of the codes and per-row scales
// of one or more parts (q | k | v, gate | up) concatenated by rows. The kernels are in
// fp8_linear.cu; CudaBackend::linear picks them by the number of activation rows.
#include <algorithm>
#include <cstdint>
#include <optional>

#include "backend/cuda/cuda_backend_impl.hpp"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/tensor_checks.hpp"
#include "core/check.hpp"

namespace moxin::cuda {
namespace {

// The checks of the CPU backend's prepare_fp8_linear, part by part, plus the fused format.
void check_fp8_part(const LinearWeight& first, const LinearWeight& w) {
  const TensorInfo& t = *w.weight;
  MOXIN_CHECK(w.is_fp8() && w.in_features == first.in_features, "[cuda] prepare_fused_linear: '", t.name,
              "' (", w.is_fp8() ? "fp8" : dtype_name(t.dtype), ", ", w.in_features, " inputs) cannot join '",
              first.weight->name, "' (fp8, ", first.in_features, " inputs): fused parts share in_features and format");
  const int64_t out = w.out_features, in = w.in_features;
  MOXIN_CHECK(out > 0 && in > 0 && t.data != nullptr && t.nbytes == static_cast<size_t>(out * in),
              "[cuda] prepare_linear: fp8 '", t.name, "' is ", t.shape_str(), " but the layer is [", out, ", ",
              in, "]");
  MOXIN_CHECK(w.scales != nullptr && w.scales->dtype == DType::F32 && w.scales->data != nullptr &&
                  w.scales->nbytes == static_cast<size_t>(out) * sizeof(float),
              "[cuda] prepare_linear: fp8 '", t.name, "' needs an F32 weight_scale of ", out,
              " values, one per output");
  MOXIN_CHECK(w.bias == nullptr, "[cuda] prepare_linear: fp8 '", t.name, "' with a bias is not supported");
}

}  // namespace

Linear CudaBackend::prepare_fp8_linear(const std::vector<const LinearWeight*>& parts) {
  prefer_pdl_everywhere();  // as for the other quantized formats (launch.cuh)
  const LinearWeight& first = *parts.front();
  int64_t out = 0;
  for (const LinearWeight* part : parts) {
    check_fp8_part(first, *part);
    out += part->out_features;
  }
  const int64_t in = first.in_features;
  MOXIN_CHECK(out <= INT32_MAX && in <= INT32_MAX, "[cuda] prepare_linear: fp8 '",
              first.weight->name, "' is too large (", out, " x ", in, ")");
  auto impl = std::make_shared<CudaLinear>();
  impl->codes = device_alloc(context_, static_cast<size_t>(out * in));
  impl->scale_bias = device_alloc(context_, static_cast<size_t>(out) * sizeof(float));
  size_t code_offset = 0, scale_offset = 0;
  for (const LinearWeight* part : parts) {
    MOXIN_CUDA_CHECK(cudaMemcpyAsync(static_cast<uint8_t*>(impl->codes.get()) + code_offset, part->weight->data,
                                     part->weight->nbytes, cudaMemcpyHostToDevice, stream()));
    MOXIN_CUDA_CHECK(cudaMemcpyAsync(static_cast<uint8_t*>(impl->scale_bias.get()) + scale_offset,
                                     part->scales->data, part->scales->nbytes, cudaMemcpyHostToDevice, stream()));
    code_offset += part->weight->nbytes;
    scale_offset += part->scales->nbytes;
  }
  synchronize();  // the host data need not outlive this call
  impl->fp8 = Fp8Matrix{static_cast<const uint8_t*>(impl->codes.get()),
                        static_cast<const float*>(impl->scale_bias.get()), static_cast<int>(out),
                        static_cast<int>(in)};
  quant_largest_elems_ = std::max(quant_largest_elems_, out * in);
  Linear linear;
  linear.out_features = out;
  linear.in_features = in;
  linear.impl = std::move(impl);
  return linear;
}

bool CudaBackend::fp8_decode_mma(int64_t m, int64_t k) const {
  return m >= kFp8MmaMinRows && m <= kQuantMmaMaxRows && k % 64 == 0;
}

// Decode rows of an FP8 linear: fp8_mma where fp8_decode_mma, else fp8_gemv (m <= kFp8GemvMaxRows).
void CudaBackend::fp8_linear_decode(const float* x, int64_t m, const CudaLinear& w, float* y) {
  if (!fp8_decode_mma(m, w.fp8.cols)) {
    fp8_gemv(x, static_cast<int>(m), w.fp8, y, stream());
    return;
  }
  MOXIN_CHECK(quant_mma_scratch_elems(m, w.fp8.cols) <= scratch_elems_, "[cuda] linear: ", m, " x ", w.fp8.cols,
              " activations exceed the scratch buffer");
  fp8_mma(x, static_cast<int>(m), w.fp8, static_cast<bf16_bits*>(lane().scratch_bf16.get()), y, stream());
}

int64_t CudaBackend::fp8_tensor_core_rows(InputActivations x, int64_t m, const CudaLinear& w, Activations y,
                                          const Fp8ChunkDone& chunk_done) {
  MOXIN_CHECK(y.f32 != nullptr || chunk_done, "[cuda] linear: a bf16 FP8 output is left unscaled for whatever reads it");
  const int64_t k = w.fp8.cols;
  if (x.e4m3_codes != nullptr) return fp8_gemm_rows(x.e4m3_codes, x.e4m3_scales, 0, m, w, y, chunk_done) ? m : 0;
  // The activation codes fill the first half of the bf16 scratch, their per-row scales the second.
  const int64_t half = scratch_elems_;  // bytes: the scratch holds 2 * scratch_elems_
  const int64_t chunk = std::min(half / k, half / static_cast<int64_t>(sizeof(float)));
  auto* codes = static_cast<uint8_t*>(lane().scratch_bf16.get());
  auto* scales = reinterpret_cast<float*>(codes + half);
  int64_t done = 0;
  while (done < m) {
    const int64_t count = std::min(chunk, m - done);
    quantize_rows_e4m3(x.rows_from(done, k), count, static_cast<int>(k), codes, scales, stream());
    if (!fp8_gemm_rows(codes, scales, done, count, w, y, chunk_done)) break;
    done += count;
  }
  return done;
}

// Rows first .. first + count of y from their E4M3 codes and token scales (scaled, or handed to
// chunk_done before the next chunk's quantization reuses `scales`); false where cuBLASLt has no
// FP8 algorithm for the shape.
bool CudaBackend::fp8_gemm_rows(const uint8_t* codes, const float* scales, int64_t first, int64_t count,
                                const CudaLinear& w, Activations y, const Fp8ChunkDone& chunk_done) {
  const int64_t n = w.fp8.rows;
  const int rows = static_cast<int>(count), outputs = static_cast<int>(n), inputs = static_cast<int>(w.fp8.cols);
  if (!chunk_done)
    return lane().gemm->run_fp8(codes, scales, w.fp8.codes, w.fp8.scales, y.f32 + first * n, rows, outputs, inputs,
                                stream());
  const Activations chunk = y.rows_from(first, n);
  void* out = chunk.bf16 != nullptr ? static_cast<void*>(chunk.bf16) : static_cast<void*>(chunk.f32);
  const std::optional<bool> scaled = lane().gemm->run_fp8_unscaled(codes, scales, w.fp8.codes, w.fp8.scales, out,
                                                                   y.bf16 != nullptr, rows, outputs, inputs, stream());
  if (!scaled) return false;
  chunk_done(first, count, scales, *scaled);
  return true;
}

// gate | up's products cross memory as bf16 (half the bytes of the layer's largest activation,
// as on the bf16 prefill path): the swiglu reads them and applies the scales; the rounding
// (2^-9 at most) is far below the E4M3 activations' own (2^-4).
int64_t CudaBackend::fp8_tensor_core_swiglu_rows(InputActivations x, int64_t m, const CudaLinear& w, float* gate_up,
                                                 Activations y) {
  const int64_t n = w.fp8.rows, cols = n / 2;
  auto* products = reinterpret_cast<bf16_bits*>(gate_up);
  return fp8_tensor_core_rows(
      x, m, w, Activations{nullptr, products},
      [&](int64_t first, int64_t rows, const float* token_scales, bool scaled) {
        const Activations out = y.rows_from(first, cols);
        const bf16_bits* chunk = products + first * n;
        if (scaled)
          swiglu_bf16_input(chunk, out, rows, cols, stream());
        else
          swiglu_scaled({nullptr, chunk}, token_scales, w.fp8.scales, out, rows, cols, stream());
      });
}

// o and down at prefill rows: the residual add reads the FP8 GEMM's products and applies the
// token and channel scales itself, so no scale pass crosses [rows, hidden] twice before it.
void CudaBackend::linear_add_rms_norm(const Tensor& a, const Linear& w, Tensor& out, Tensor& x, const Tensor& norm_w,
                                      float eps, Tensor& normed) {
  const CudaLinear& lw = cuda_linear(w, "linear_add_rms_norm");
  const int64_t m = a.rows(), n = w.out_features, k = w.in_features;
  if (!lw.is_fp8() || !fp8_on_tensor_cores(m) || out.dtype != DType::F32 || x.dtype != DType::F32) {
    Backend::linear_add_rms_norm(a, w, out, x, norm_w, eps, normed);
    return;
  }
  require_shape(a, m, k, "linear_add_rms_norm", "a");
  require_shape(out, m, n, "linear_add_rms_norm", "out");
  require_shape(x, m, n, "linear_add_rms_norm", "x");
  require_shape(normed, m, n, "linear_add_rms_norm", "normed");
  require(norm_w, DType::F32, "linear_add_rms_norm", "norm weight");
  MOXIN_CHECK(norm_w.numel() == n, "[cuda] linear_add_rms_norm: norm weight ", norm_w.shape_str(), " does not match ", n,
              " columns");
  MOXIN_CHECK(normed.data != x.data && normed.data != out.data && out.data != x.data,
              "[cuda] linear_add_rms_norm: out, x and normed must be three tensors");
  const InputActivations in = require_input_activations(a, "linear_add_rms_norm", "a");
  const Activations norm_out = require_activations(normed, "linear_add_rms_norm", "normed", true);
  float* const products = data_of<float>(out);
  float* const residual = data_of<float>(x);
  const int64_t done = fp8_tensor_core_rows(
      in, m, lw, {products, nullptr},
      [&](int64_t first, int64_t rows, const float* token_scales, bool scaled) {
        cuda::add_rms_norm(residual + first * n, products + first * n, data_of<const float>(norm_w), eps,
                           norm_out.rows_from(first, n), rows, n, stream(), scaled ? nullptr : token_scales,
                           scaled ? nullptr : lw.fp8.scales);
      });
  if (done == m) return;
  Tensor rest_a = a.rows_view(done, m - done), rest_out = out.rows_view(done, m - done);
  Tensor rest_x = x.rows_view(done, m - done), rest_normed = normed.rows_view(done, m - done);
  Backend::linear_add_rms_norm(rest_a, w, rest_out, rest_x, norm_w, eps, rest_normed);
}

// q | k | v at prefill rows from per-token E4M3 input (the norm wrote the codes): the FP8 GEMM's
// products stay unscaled where cuBLASLt leaves them so, and the RoPE + K/V write applies the token
// and channel scales as it reads them (no scale pass over [rows, q | k | v] in f32).
void CudaBackend::linear_rope_paged_attention(const Tensor& x, const Linear& w, Tensor& qkv, const Tensor& positions,
                                              float theta, KvCache& cache, int layer, const AttentionBatch& batch,
                                              int q_heads, Tensor& q, Tensor& y) {
  const CudaLinear& lw = cuda_linear(w, "linear_rope_paged_attention");
  const int64_t m = x.rows(), n = w.out_features, k = w.in_features;
  if (x.dtype != DType::F8_E4M3 || qkv.dtype != DType::F32 || !takes_e4m3_activations(lw, m, n, k) ||
      fuses_rope_into_attention(cache.config(), batch, m, q_heads)) {
    Backend::linear_rope_paged_attention(x, w, qkv, positions, theta, cache, layer, batch, q_heads, q, y);
    return;
  }
  require_shape(x, m, k, "linear_rope_paged_attention", "x");
  require_shape(qkv, m, n, "linear_rope_paged_attention", "qkv");
  const InputActivations in = require_input_activations(x, "linear_rope_paged_attention", "x");
  QkvScales scales;
  const int64_t done = fp8_tensor_core_rows(in, m, lw, {data_of<float>(qkv), nullptr},
                                            [&](int64_t, int64_t, const float* token_scales, bool scaled) {
                                              if (!scaled) scales = {token_scales, lw.fp8.scales};
                                            });
  MOXIN_CHECK(done == m, "[cuda] linear_rope_paged_attention: cuBLASLt ran no FP8 GEMM for [", m, " x ", k, "] x [", n,
              " x ", k, "]");
  rope_kv_write_scaled(qkv, scales, positions, theta, cache, layer, batch, q);
  paged_attention(q, cache, layer, batch, q_heads, y);
}

}  // namespace moxin::cuda
