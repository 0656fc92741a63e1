// A decoder layer's residual steps inside its decode linears (Backend::rms_norm_linear,
// rms_norm_linear_swiglu, linear_add): the RMSNorm before qkv and gate | up, and the residual add
// after o and down, run in the GEMV that multiplies them (kernels.hpp's LinearFusion). Same bits
// as the separate ops; the layer loses its two add_rms_norm kernels and their boundaries.
#include "backend/cuda/cuda_backend_impl.hpp"
#include "backend/cuda/tensor_checks.hpp"

namespace moxin::cuda {

bool CudaBackend::fuses_residual_step(const CudaLinear& w, int64_t m, int64_t n, int64_t k, bool norm_in) const {
  // Quantized and FP8 decoders keep the separate ops: their launches use PDL (launch.cuh), under
  // which the next GEMV's blocks are resident and prefetching while add_rms_norm runs, so the
  // boundary costs little and a norm-in prologue on every block costs more (4-bit g64 batch 1 on
  // an H100: 337 tok/s fused against 365 separate; docs/cuda-notes.md, session 14).
  if (!fused_residual_ || m < 1 || w.quant.bits != 0 || w.is_fp8()) return false;
  if (m > kFusedGemvMaxRows || k % 8 != 0 || (norm_in && m * k > kFusedGemvMaxNormedFloats)) return false;
  // Only where the unfused linear would run the GEMV too: elsewhere another kernel is faster.
  return bf16_decode_kernel_for_shape(m, n, k) == DecodeKernel::Gemv;
}

bool CudaBackend::fuses_rms_norm_into(const Linear& w, int64_t rows) const {
  return fuses_residual_step(cuda_linear(w, "fuses_rms_norm_into"), rows, w.out_features, w.in_features, true);
}

bool CudaBackend::fuses_add_into(const Linear& w, int64_t rows) const {
  return fuses_residual_step(cuda_linear(w, "fuses_add_into"), rows, w.out_features, w.in_features, false);
}

bool CudaBackend::run_fused_linear(const Tensor& x, const Linear& w, const LinearFusion& fusion, bool gated,
                                   Tensor& y, const char* op) {
  const CudaLinear& lw = cuda_linear(w, op);
  const int64_t m = x.rows(), k = w.in_features, n = w.out_features;
  if (!fuses_residual_step(lw, m, n, k, fusion.norm_weight != nullptr) || x.dtype != DType::F32 ||
      y.dtype != DType::F32 || (gated && n % 2 != 0))
    return false;
  require_shape(x, m, k, op, "x");
  require_shape(y, m, gated ? n / 2 : n, op, "y");
  const float* xd = data_of<const float>(x);
  const auto* wd = static_cast<const bf16_bits*>(lw.weight.get());
  const int rows = static_cast<int>(m), inputs = static_cast<int>(k);
  if (!gemv_bf16_fusable(xd, wd, rows, inputs, gated, fusion)) return false;
  const auto* bias = static_cast<const float*>(lw.bias.get());
  if (gated)
    gemv_bf16_swiglu(xd, rows, wd, bias, data_of<float>(y), static_cast<int>(n / 2), inputs, stream(), fusion);
  else
    gemv_bf16(xd, rows, wd, bias, data_of<float>(y), static_cast<int>(n), inputs, stream(), fusion);
  return true;
}

namespace {

LinearFusion norm_fusion(const Tensor& norm_w, float eps, const Linear& w, const char* op) {
  require(norm_w, DType::F32, op, "norm weight");
  MOXIN_CHECK(norm_w.numel() == w.in_features, "[cuda] ", op, ": norm weight ", norm_w.shape_str(),
              " does not match the linear's ", w.in_features, " inputs");
  return LinearFusion{data_of<const float>(norm_w), eps, false};
}

}  // namespace

void CudaBackend::rms_norm_linear(const Tensor& x, const Tensor& norm_w, float eps, const Linear& w, Tensor& normed,
                                  Tensor& y) {
  if (!run_fused_linear(x, w, norm_fusion(norm_w, eps, w, "rms_norm_linear"), false, y, "rms_norm_linear"))
    Backend::rms_norm_linear(x, norm_w, eps, w, normed, y);
}

void CudaBackend::rms_norm_linear_swiglu(const Tensor& x, const Tensor& norm_w, float eps, const Linear& w,
                                         Tensor& normed, Tensor& gate_up, Tensor& y) {
  if (!run_fused_linear(x, w, norm_fusion(norm_w, eps, w, "rms_norm_linear_swiglu"), true, y,
                        "rms_norm_linear_swiglu"))
    Backend::rms_norm_linear_swiglu(x, norm_w, eps, w, normed, gate_up, y);
}

void CudaBackend::linear_add(const Tensor& a, const Linear& w, Tensor& out, Tensor& x) {
  if (!run_fused_linear(a, w, LinearFusion{nullptr, 0.0f, true}, false, x, "linear_add"))
    Backend::linear_add(a, w, out, x);
}

}  // namespace moxin::cuda

namespace moxin {

void set_cuda_fused_residual(Backend& backend, bool on) {
  cuda::cuda_backend_of(backend, "set_cuda_fused_residual").set_fused_residual(on);
}

}  // namespace moxin
