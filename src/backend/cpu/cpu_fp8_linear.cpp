// prepare_linear for FP8 E4M3 weights with per-output-channel scales (docs/model.md section 5):
// the codes are widened once to BF16, which holds every E4M3 value exactly, so the dense BF16
// kernels run unchanged and the scale is applied per output column afterwards (linear() in
// cpu_ops_linear.cpp). The result equals x . (codes * scale) up to f32 summation order.
#include <array>
#include <cstring>

#include "backend/cpu/cpu_backend_impl.hpp"
#include "core/bf16.hpp"
#include "core/check.hpp"
#include "core/fp8_e4m3.hpp"

namespace moxin::cpu {
namespace {

std::array<uint16_t, 256> e4m3_to_bf16_table() {
  std::array<uint16_t, 256> table{};
  for (int c = 0; c < 256; ++c) table[static_cast<size_t>(c)] = f32_to_bf16(e4m3_to_f32(static_cast<uint8_t>(c)));
  return table;
}

}  // namespace

Linear CpuBackend::prepare_fp8_linear(const LinearWeight& w) {
  const TensorInfo& t = *w.weight;
  const int64_t out = w.out_features, in = w.in_features;
  MOXIN_CHECK(out > 0 && in > 0 && t.data != nullptr && t.nbytes == static_cast<size_t>(out * in),
              "[cpu] prepare_linear: fp8 '", t.name, "' is ", t.shape_str(), " but the layer is [", out, ", ",
              in, "]");
  MOXIN_CHECK(w.scales != nullptr && w.scales->dtype == DType::F32 && w.scales->data != nullptr &&
                  w.scales->nbytes == static_cast<size_t>(out) * sizeof(float),
              "[cpu] prepare_linear: fp8 '", t.name, "' needs an F32 weight_scale of ", out, " values, one per output");
  MOXIN_CHECK(w.bias == nullptr, "[cpu] prepare_linear: fp8 '", t.name, "' with a bias is not supported");
  auto impl = std::make_shared<CpuLinear>();
  impl->name = t.name;
  impl->fp8_codes.resize(static_cast<size_t>(out * in));
  static const std::array<uint16_t, 256> kTable = e4m3_to_bf16_table();
  pool_.parallel_for(out, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin * in; i < end * in; ++i) impl->fp8_codes[static_cast<size_t>(i)] = kTable[t.data[i]];
  }, 64);
  impl->channel_scales.resize(static_cast<size_t>(out));
  std::memcpy(impl->channel_scales.data(), w.scales->data, w.scales->nbytes);
  impl->weight = WeightView{DType::BF16, impl->fp8_codes.data(), out, in, in};
  Linear l;
  l.out_features = out;
  l.in_features = in;
  l.impl = std::move(impl);
  return l;
}

}  // namespace moxin::cpu
