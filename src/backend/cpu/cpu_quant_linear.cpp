// prepare_linear for quantized weights: checks the packed layout and keeps a QuantView into
// the checkpoint mapping (or the load-time QuantizedWeights store); nothing is copied.
#include "backend/cpu/cpu_backend_impl.hpp"
#include "core/check.hpp"

namespace moxin::cpu {

Linear CpuBackend::prepare_quantized_linear(const LinearWeight& w) {
  const TensorInfo& t = *w.weight;
  check_quant_format(w.bits, w.group_size, cat("'", t.name, "'"));
  const int64_t out = w.out_features, in = w.in_features;
  MOXIN_CHECK(out > 0 && in > 0 && in % w.group_size == 0, "[cpu] prepare_linear: quantized '", t.name,
              "' is [", out, ", ", in, "]: input features must be a positive multiple of group size ",
              w.group_size);
  MOXIN_CHECK(t.dtype == DType::U32 && t.data != nullptr && t.nbytes == static_cast<size_t>(out * in * w.bits / 8),
              "[cpu] prepare_linear: '", t.name, "' must hold ", out, " x ", in * w.bits / 32,
              " U32 words of packed codes but is ", dtype_name(t.dtype), " ", t.shape_str());
  MOXIN_CHECK(w.scales != nullptr && w.qbiases != nullptr, "[cpu] prepare_linear: quantized '", t.name,
              "' lacks its scales or biases");
  const int64_t groups = out * (in / w.group_size);
  for (const TensorInfo* s : {w.scales, w.qbiases})
    MOXIN_CHECK((s->dtype == DType::BF16 || s->dtype == DType::F16 || s->dtype == DType::F32) &&
                    s->dtype == w.scales->dtype && s->data != nullptr &&
                    s->nbytes == static_cast<size_t>(groups) * dtype_size(s->dtype),
                "[cpu] prepare_linear: '", s->name, "' is ", dtype_name(s->dtype), " ", s->shape_str(),
                "; expected ", groups, " BF16/F16/F32 values matching '", w.scales->name, "'");
  auto impl = std::make_shared<CpuLinear>();
  impl->name = t.name;
  impl->weight = WeightView{DType::U32, t.data, out, in, in};
  impl->quant = QuantView{reinterpret_cast<const uint32_t*>(t.data), w.scales->data, w.qbiases->data,
                          w.scales->dtype, out, in, w.bits, w.group_size};
  MOXIN_CHECK(w.bias == nullptr, "[cpu] prepare_linear: quantized '", t.name, "' with a bias is not supported");
  Linear l;
  l.out_features = out;
  l.in_features = in;
  l.impl = std::move(impl);
  return l;
}

}  // namespace moxin::cpu
