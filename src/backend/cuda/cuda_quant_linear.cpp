// Quantized linears on the GPU (docs/model.md section 5): upload of MLX-format codes with their
// scales and biases, and the choice of kernel by the number of activation rows.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "backend/cuda/cuda_backend_impl.hpp"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/launch.cuh"
#include "core/check.hpp"
#include "quant/affine_quant.hpp"

namespace moxin::cuda {
namespace {

// The checks of the CPU backend's prepare_quantized_linear, part by part.
void check_quantized_part(const LinearWeight& w) {
  const TensorInfo& t = *w.weight;
  check_quant_format(w.bits, w.group_size, cat("'", t.name, "'"));
  const int64_t out = w.out_features, in = w.in_features;
  MOXIN_CHECK(out > 0 && in > 0 && in % w.group_size == 0, "[cuda] prepare_linear: quantized '",
              t.name, "' is [", out, ", ", in,
              "]: input features must be a positive multiple of group size ", w.group_size);
  MOXIN_CHECK(t.dtype == DType::U32 && t.data != nullptr &&
                  t.nbytes == static_cast<size_t>(out * in * w.bits / 8),
              "[cuda] prepare_linear: '", t.name, "' must hold ", out, " x ", in * w.bits / 32,
              " U32 words of packed codes but is ", dtype_name(t.dtype), " ", t.shape_str());
  MOXIN_CHECK(w.scales != nullptr && w.qbiases != nullptr, "[cuda] prepare_linear: quantized '",
              t.name, "' lacks its scales or biases");
  const int64_t groups = out * (in / w.group_size);
  for (const TensorInfo* s : {w.scales, w.qbiases})
    MOXIN_CHECK((s->dtype == DType::BF16 || s->dtype == DType::F16 || s->dtype == DType::F32) &&
                    s->dtype == w.scales->dtype && s->data != nullptr &&
                    s->nbytes == static_cast<size_t>(groups) * dtype_size(s->dtype),
                "[cuda] prepare_linear: '", s->name, "' is ", dtype_name(s->dtype), " ",
                s->shape_str(), "; expected ", groups, " BF16/F16/F32 values matching '",
                w.scales->name, "'");
  MOXIN_CHECK(w.bias == nullptr, "[cuda] prepare_linear: quantized '", t.name,
              "' with a bias is not supported");
}

// Parts of one fused matrix must agree on everything but their output rows.
void check_same_format(const LinearWeight& first, const LinearWeight& part) {
  auto describe = [](const LinearWeight& w) {
    return cat("'", w.weight->name, "' (", w.in_features, " inputs, ", w.bits, "-bit, group ",
               w.group_size, ", ", dtype_name(w.scales->dtype), " scales)");
  };
  MOXIN_CHECK(part.in_features == first.in_features && part.bits == first.bits &&
                  part.group_size == first.group_size &&
                  part.scales->dtype == first.scales->dtype,
              "[cuda] prepare_fused_linear: ", describe(part), " cannot join ", describe(first),
              ": fused quantized parts share in_features, bits, group size and scale dtype");
}

// Appends the part's scale/bias pairs in the device layout (kernels.hpp, QuantMatrix).
void append_pairs(const LinearWeight& w, bool f32_pairs, std::vector<uint8_t>& out) {
  const int64_t groups = w.out_features * (w.in_features / w.group_size);
  const size_t pair_bytes = f32_pairs ? 8 : 4;
  const size_t at = out.size();
  out.resize(at + static_cast<size_t>(groups) * pair_bytes);
  uint8_t* dst = out.data() + at;
  for (int64_t i = 0; i < groups; ++i) {
    if (f32_pairs) {
      const float pair[2] = {load_scale(w.scales->data, w.scales->dtype, i),
                             load_scale(w.qbiases->data, w.qbiases->dtype, i)};
      std::memcpy(dst + 8 * i, pair, 8);
    } else {  // bf16 scale in the low half, bias in the high half
      uint16_t pair[2];
      std::memcpy(&pair[0], w.scales->data + 2 * i, 2);
      std::memcpy(&pair[1], w.qbiases->data + 2 * i, 2);
      std::memcpy(dst + 4 * i, pair, 4);
    }
  }
}

}  // namespace

Linear CudaBackend::prepare_quantized_linear(const std::vector<const LinearWeight*>& parts) {
  MOXIN_CHECK(!parts.empty(), "[cuda] prepare_quantized_linear: no parts");
  prefer_pdl_everywhere();  // see launch.cuh: a quantized decoder's graph runs faster with PDL
  for (const LinearWeight* part : parts) {
    MOXIN_CHECK(part != nullptr && part->weight != nullptr, "[cuda] prepare_linear: no weight tensor");
    check_quantized_part(*part);
    check_same_format(*parts.front(), *part);
  }
  const LinearWeight& first = *parts.front();
  // bf16 scales stay bf16 (4 bytes a group); f16 and f32 ones become f32 pairs, exactly.
  const bool f32_pairs = first.scales->dtype != DType::BF16;
  int64_t out = 0;
  std::vector<uint8_t> pairs;
  for (const LinearWeight* part : parts) {
    out += part->out_features;
    append_pairs(*part, f32_pairs, pairs);
  }
  const int64_t in = first.in_features;
  MOXIN_CHECK(out <= INT32_MAX && in <= INT32_MAX, "[cuda] prepare_linear: quantized '",
              first.weight->name, "' is too large (", out, " x ", in, ")");
  auto impl = std::make_shared<CudaLinear>();
  const size_t code_bytes = static_cast<size_t>(out * in * first.bits / 8);
  impl->codes = device_alloc(context_, code_bytes);
  impl->scale_bias = device_alloc(context_, pairs.size());
  size_t offset = 0;
  for (const LinearWeight* part : parts) {
    MOXIN_CUDA_CHECK(cudaMemcpyAsync(static_cast<uint8_t*>(impl->codes.get()) + offset,
                                     part->weight->data, part->weight->nbytes,
                                     cudaMemcpyHostToDevice, stream()));
    offset += part->weight->nbytes;
  }
  MOXIN_CUDA_CHECK(cudaMemcpyAsync(impl->scale_bias.get(), pairs.data(), pairs.size(),
                                   cudaMemcpyHostToDevice, stream()));
  synchronize();  // `pairs` dies here
  impl->quant = QuantMatrix{static_cast<const uint32_t*>(impl->codes.get()),
                            impl->scale_bias.get(),
                            f32_pairs,
                            first.bits,
                            first.group_size,
                            static_cast<int>(out),
                            static_cast<int>(in)};
  quant_largest_elems_ = std::max(quant_largest_elems_, out * in);
  Linear linear;
  linear.out_features = out;
  linear.in_features = in;
  linear.impl = std::move(impl);
  return linear;
}

void CudaBackend::quantized_linear_decode(const float* x, int64_t m, const CudaLinear& w,
                                          float* y) {
  if (m <= kQuantGemvMaxRows) {
    quant_gemv(x, static_cast<int>(m), w.quant, y, stream());
    return;
  }
  MOXIN_CHECK(quant_mma_scratch_elems(m, w.quant.cols) <= scratch_elems_, "[cuda] linear: ", m,
              " x ", w.quant.cols, " activations exceed the scratch buffer");
  quant_mma(x, static_cast<int>(m), w.quant, static_cast<bf16_bits*>(lane().scratch_bf16.get()), y,
            stream());
}

// One scratch for every quantized linear, sized for the largest prepared so far: prefill
// dequantizes each layer's weights into it just before its GEMM (stream order keeps the uses
// apart).
const CudaLinear& CudaBackend::dequantized(const CudaLinear& w) {
  require_main_lane("a quantized linear's prefill path");
  const int64_t elems = w.dense_elems();
  if (elems > quant_dense_elems_) {
    quant_dense_elems_ = std::max(elems, quant_largest_elems_);
    quant_dense_.weight = device_alloc(context_, static_cast<size_t>(quant_dense_elems_) * 2);
  }
  auto* dense = static_cast<bf16_bits*>(quant_dense_.weight.get());
  if (w.is_fp8())
    fp8_codes_to_bf16(w.fp8, dense, stream());
  else
    quant_dequantize_bf16(w.quant, dense, stream());
  return quant_dense_;
}

}  // namespace moxin::cuda
