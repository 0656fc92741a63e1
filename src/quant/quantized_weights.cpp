#include "quant/quantized_weights.hpp"

#include "core/check.hpp"

namespace moxin {
namespace {

std::vector<LinearWeight*> quantizable_linears(DecoderWeights& d) {
  std::vector<LinearWeight*> out;
  for (DecoderLayerWeights& l : d.layers)
    for (LinearWeight* w : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) out.push_back(w);
  out.push_back(&d.lm_head);
  return out;
}

// "x.weight" -> "x": the quantized tensors are named "<prefix>.weight/.scales/.biases".
std::string prefix_of(const std::string& weight_name) {
  const std::string suffix = ".weight";
  if (weight_name.size() > suffix.size() &&
      weight_name.compare(weight_name.size() - suffix.size(), suffix.size(), suffix) == 0)
    return weight_name.substr(0, weight_name.size() - suffix.size());
  return weight_name;
}

}  // namespace

std::vector<const LinearWeight*> quantizable_linears(const DecoderWeights& decoder) {
  std::vector<const LinearWeight*> out;
  for (LinearWeight* w : quantizable_linears(const_cast<DecoderWeights&>(decoder))) out.push_back(w);
  return out;
}

// What every quantized form needs of its input: a dense, bias-free matrix.
void check_dense_input(const LinearWeight& dense) {
  MOXIN_CHECK(dense.weight != nullptr, "[quant] a decoder linear has no weight tensor");
  const TensorInfo& t = *dense.weight;
  MOXIN_CHECK(dense.bits == 0 && !dense.is_fp8(), "[quant] '", t.name, "' is already ",
              dense.is_fp8() ? std::string("fp8") : cat(dense.bits, "-bit"),
              " quantized; --quantize needs a bf16/f16/f32 checkpoint (drop --quantize)");
  MOXIN_CHECK(dense.bias == nullptr, "[quant] '", t.name, "' has a bias; decoder linears have none");
  MOXIN_CHECK(t.shape.size() == 2, "[quant] '", t.name, "' is ", t.shape_str(), ", not a matrix");
}

LinearWeight QuantizedWeights::add(const LinearWeight& dense, int bits, int group_size, ThreadPool* pool) {
  check_dense_input(dense);
  const TensorInfo& t = *dense.weight;
  auto e = std::make_unique<Entry>();
  e->matrix = quantize_matrix(t.data, t.dtype, t.shape[0], t.shape[1], bits, group_size, pool, t.name);
  const QuantizedMatrix& m = e->matrix;
  const std::string prefix = prefix_of(t.name);
  const std::vector<int64_t> groups{m.rows, m.cols / group_size};
  e->codes = TensorInfo{t.name, DType::U32, {m.rows, m.cols * bits / 32},
                        reinterpret_cast<const uint8_t*>(m.codes.data()), m.codes.size() * 4,
                        "(quantized in memory)"};
  e->scales = TensorInfo{prefix + ".scales", m.scale_dtype, groups, m.scales.data(), m.scales.size(),
                         "(quantized in memory)"};
  e->biases = TensorInfo{prefix + ".biases", m.scale_dtype, groups, m.biases.data(), m.biases.size(),
                         "(quantized in memory)"};
  LinearWeight q;
  q.weight = &e->codes;
  q.scales = &e->scales;
  q.qbiases = &e->biases;
  q.bits = bits;
  q.group_size = group_size;
  q.out_features = m.rows;
  q.in_features = m.cols;
  entries_.push_back(std::move(e));
  return q;
}

LinearWeight QuantizedWeights::add_fp8(const LinearWeight& dense, ThreadPool* pool) {
  check_dense_input(dense);
  const TensorInfo& t = *dense.weight;
  auto e = std::make_unique<Entry>();
  e->fp8 = moxin::quantize_fp8(t.data, t.dtype, t.shape[0], t.shape[1], pool, t.name);
  const Fp8Matrix& m = e->fp8;
  e->codes = TensorInfo{t.name, DType::F8_E4M3, {m.rows, m.cols}, m.codes.data(), m.codes.size(),
                        "(quantized in memory)"};
  e->scales = TensorInfo{prefix_of(t.name) + ".weight_scale", DType::F32, {m.rows},
                         reinterpret_cast<const uint8_t*>(m.scales.data()), m.scales.size() * 4,
                         "(quantized in memory)"};
  LinearWeight q;
  q.weight = &e->codes;
  q.scales = &e->scales;
  q.out_features = m.rows;
  q.in_features = m.cols;
  entries_.push_back(std::move(e));
  return q;
}

DecoderWeights QuantizedWeights::replace_linears(const DecoderWeights& decoder, const Replace& replace,
                                                 const Progress& progress) {
  DecoderWeights out = decoder;
  const std::vector<LinearWeight*> targets = quantizable_linears(out);
  const int total = static_cast<int>(targets.size());
  for (int i = 0; i < total; ++i) {
    const TensorInfo& dense = *targets[i]->weight;
    *targets[i] = replace(*targets[i]);
    if (progress) progress(i + 1, total, dense);
  }
  return out;
}

DecoderWeights QuantizedWeights::quantize(const DecoderWeights& decoder, int bits, int group_size,
                                          ThreadPool* pool, const Progress& progress) {
  check_quant_format(bits, group_size, "--quantize");
  return replace_linears(
      decoder, [&](const LinearWeight& dense) { return add(dense, bits, group_size, pool); }, progress);
}

DecoderWeights QuantizedWeights::quantize_fp8(const DecoderWeights& decoder, ThreadPool* pool,
                                              const Progress& progress) {
  return replace_linears(decoder, [&](const LinearWeight& dense) { return add_fp8(dense, pool); }, progress);
}

size_t QuantizedWeights::bytes() const {
  size_t n = 0;
  for (const auto& e : entries_) n += e->codes.nbytes + e->scales.nbytes + e->biases.nbytes;
  return n;
}

}  // namespace moxin
