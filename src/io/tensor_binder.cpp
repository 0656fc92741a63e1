#include "io/tensor_binder.hpp"

#include <algorithm>
#include <cctype>

#include "core/check.hpp"

namespace moxin {

TensorBinder::TensorBinder(TensorStore& store, std::string dir)
    : store_(store), dir_(std::move(dir)) {}

std::string TensorBinder::pick_spelling(const std::vector<std::string>& spellings) const {
  std::vector<std::string> present;
  for (const auto& s : spellings)
    if (has(s)) present.push_back(s);
  MOXIN_CHECK(present.size() <= 1, "[checkpoint] ", dir_, ": both '", present[0], "' and '",
              present[1], "' exist; a checkpoint must use one naming");
  return present.empty() ? spellings.front() : present.front();
}

int TensorBinder::count_indexed(const std::string& prefix) const {
  std::set<int> indices;
  for (const auto& name : store_.names()) {
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    const size_t dot = name.find('.', prefix.size());
    const std::string digits = name.substr(prefix.size(), dot - prefix.size());
    // Only canonical numbers ("7", not "07" or "x"); anything else is reported as unexpected.
    if (dot == std::string::npos || digits.empty() || digits.size() > 6 ||
        !std::all_of(digits.begin(), digits.end(), [](char c) { return std::isdigit(c); }) ||
        std::to_string(std::stoi(digits)) != digits)
      continue;
    indices.insert(std::stoi(digits));
  }
  const int count = static_cast<int>(indices.size());
  if (count > 0 && *indices.rbegin() != count - 1) {
    int missing = 0;
    while (indices.count(missing)) ++missing;
    fail("[checkpoint] missing tensors '", prefix, missing, ".*' in ", dir_, ": indices up to ",
         *indices.rbegin(), " exist but ", missing, " does not");
  }
  return count;
}

const TensorInfo& TensorBinder::claim(const std::string& name, const std::string& expected) {
  const TensorInfo* t = store_.find(name);
  MOXIN_CHECK(t != nullptr, "[checkpoint] missing tensor '", name, "' (expected shape ", expected,
              ") in ", dir_);
  claimed_.insert(name);
  return *t;
}

void TensorBinder::expect_float(const TensorInfo& t) const {
  MOXIN_CHECK(t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16,
              "[checkpoint] ", t.file, ": tensor '", t.name, "' has dtype ", dtype_name(t.dtype),
              ", expected F32, F16 or BF16");
}

void TensorBinder::expect_shape(const TensorInfo& t, const std::vector<int64_t>& shape,
                                const std::string& note) const {
  MOXIN_CHECK(t.shape == shape, "[checkpoint] ", t.file, ": tensor '", t.name, "' has shape ",
              t.shape_str(), ", expected ", shape_str(shape), note);
}

const TensorInfo& TensorBinder::ranked(const std::string& name, size_t rank,
                                       const std::string& expected) {
  const TensorInfo& t = claim(name, expected);
  expect_float(t);
  MOXIN_CHECK(t.shape.size() == rank, "[checkpoint] ", t.file, ": tensor '", name, "' has shape ",
              t.shape_str(), ", expected ", expected);
  return t;
}

const TensorInfo& TensorBinder::shaped(const std::string& name, const std::vector<int64_t>& shape) {
  const TensorInfo& t = claim(name, shape_str(shape));
  expect_float(t);
  expect_shape(t, shape);
  return t;
}

const TensorInfo* TensorBinder::shaped_if_present(const std::string& name,
                                                  const std::vector<int64_t>& shape) {
  return has(name) ? &shaped(name, shape) : nullptr;
}

std::string TensorBinder::linear_weight_name(const std::string& prefix) const {
  return pick_spelling({prefix + ".weight", prefix + ".inner.weight"});
}

int64_t TensorBinder::out_features(const std::string& prefix) {
  const TensorInfo& t = claim(linear_weight_name(prefix), "[out, in]");
  MOXIN_CHECK(t.shape.size() == 2, "[checkpoint] ", t.file, ": tensor '", t.name, "' has shape ",
              t.shape_str(), ", expected [out, in]");
  return t.shape[0];
}

NormWeight TensorBinder::norm(const std::string& prefix, int64_t dim, bool with_bias) {
  NormWeight n;
  n.weight = &shaped(prefix + ".weight", {dim});
  if (with_bias) n.bias = &shaped(prefix + ".bias", {dim});
  return n;
}

LinearWeight TensorBinder::dense_linear(const std::string& prefix, int64_t out, int64_t in,
                                        bool with_bias) {
  LinearWeight w;
  w.weight = &shaped(prefix + ".weight", {out, in});
  if (with_bias) w.bias = &shaped(prefix + ".bias", {out});
  w.out_features = out;
  w.in_features = in;
  return w;
}

LinearWeight TensorBinder::fp8_linear(const std::string& prefix, int64_t out, int64_t in,
                                      const QuantizationConfig* quant) {
  MOXIN_CHECK(quant != nullptr && quant->fp8, "[checkpoint] ", dir_, ": tensor '", prefix,
              ".weight_scale' marks '", prefix, "' as fp8, but ",
              quant ? cat(quant->source, " says bits ", quant->bits, ", group_size ", quant->group_size)
                    : std::string("neither quantize_config.json nor config.json \"quantization\" says so"),
              " (fp8 checkpoints carry {\"quant_method\": \"fp8\", \"weight_scale\": \"per_channel\"})");
  LinearWeight w;
  w.out_features = out;
  w.in_features = in;
  w.weight = &claim(prefix + ".weight", shape_str({out, in}));
  MOXIN_CHECK(w.weight->dtype == DType::F8_E4M3, "[checkpoint] ", w.weight->file, ": tensor '", w.weight->name,
              "' has dtype ", dtype_name(w.weight->dtype), ", expected F8_E4M3 (since '", prefix,
              ".weight_scale' exists)");
  expect_shape(*w.weight, {out, in});
  w.scales = &claim(prefix + ".weight_scale", shape_str({out}));
  MOXIN_CHECK(w.scales->dtype == DType::F32, "[checkpoint] ", w.scales->file, ": tensor '", w.scales->name,
              "' has dtype ", dtype_name(w.scales->dtype), ", expected F32 (one scale per output channel)");
  expect_shape(*w.scales, {out}, " (one scale per output channel)");
  return w;
}

LinearWeight TensorBinder::decoder_linear(const std::string& prefix, int64_t out, int64_t in,
                                          const QuantizationConfig* quant) {
  if (has(prefix + ".weight_scale")) return fp8_linear(prefix, out, in, quant);
  if (!has(prefix + ".scales")) {
    const TensorInfo* weight = store_.find(prefix + ".weight");
    MOXIN_CHECK(weight == nullptr || weight->dtype != DType::F8_E4M3, "[checkpoint] ", dir_, ": '", prefix,
                ".weight' is F8_E4M3 but '", prefix,
                ".weight_scale' (F32 [out]) is missing");
    return dense_linear(prefix, out, in, false);
  }
  MOXIN_CHECK(quant == nullptr || !quant->fp8, "[checkpoint] ", dir_, ": tensor '", prefix,
              ".scales' marks '", prefix, "' as affine-quantized, but ", quant->source,
              " says fp8 (which has '.weight_scale' instead)");
  MOXIN_CHECK(quant != nullptr, "[checkpoint] ", dir_, ": tensor '", prefix, ".scales' marks '",
              prefix,
              "' as quantized, but neither quantize_config.json nor "
              "config.json \"quantization\" gives bits and group_size");
  const std::string meta =
      cat(quant->source, " says bits ", quant->bits, ", group_size ", quant->group_size);
  MOXIN_CHECK(in % quant->group_size == 0, "[checkpoint] ", dir_, ": '", prefix, "' has ", in,
              " input features, not a multiple of group_size ", quant->group_size, " (", meta, ")");
  LinearWeight w;
  w.bits = quant->bits;
  w.group_size = quant->group_size;
  w.out_features = out;
  w.in_features = in;
  const std::vector<int64_t> packed{out, in * quant->bits / 32};
  const std::vector<int64_t> groups{out, in / quant->group_size};
  const TensorInfo& codes = claim(linear_weight_name(prefix), shape_str(packed));
  MOXIN_CHECK(codes.dtype == DType::U32, "[checkpoint] ", codes.file, ": tensor '", codes.name,
              "' has dtype ", dtype_name(codes.dtype), ", expected U32 (packed codes, since '",
              prefix, ".scales' exists)");
  expect_shape(
      codes, packed,
      cat(" (", quant->bits, "-bit codes of ", in, " input features packed into U32; ", meta, ")"));
  w.weight = &codes;
  w.scales = &claim(prefix + ".scales", shape_str(groups));
  w.qbiases = &claim(prefix + ".biases", shape_str(groups));
  for (const TensorInfo* t : {w.scales, w.qbiases}) {
    expect_float(*t);
    expect_shape(*t, groups, cat(" (one per group of ", quant->group_size, " inputs; ", meta, ")"));
  }
  return w;
}

std::vector<const TensorInfo*> TensorBinder::unused() const {
  std::vector<const TensorInfo*> out;
  for (const auto& name : store_.names())
    if (!claimed_.count(name)) out.push_back(store_.find(name));
  return out;
}

}  // namespace moxin
