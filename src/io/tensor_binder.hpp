// The lookups the checkpoint mapping is written with: each fetches a tensor by name, checks
// its dtype and shape with messages naming file, tensor, expected and actual shape, and
// records it as used so leftovers can be reported as unexpected.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "io/checkpoint.hpp"
#include "io/model_config.hpp"

namespace moxin {

class TensorBinder {
 public:
  TensorBinder(TensorStore& store, std::string dir);

  TensorStore& store() { return store_; }
  bool has(const std::string& name) const { return store_.find(name) != nullptr; }

  // Which of several spellings this checkpoint uses for a name (the published one first):
  // the one present, or the first when none is. Two present at once is an error.
  std::string pick_spelling(const std::vector<std::string>& spellings) const;

  // Number of consecutive indices N for which some tensor "<prefix>N." exists (blocks,
  // layers); a gap in the numbering is an error naming the missing index.
  int count_indexed(const std::string& prefix) const;

  // A float tensor (F32/F16/BF16) of the given rank, whose dimensions the caller derives;
  // `expected` names them for messages ("[vocab, hidden]").
  const TensorInfo& ranked(const std::string& name, size_t rank, const std::string& expected);
  // A float tensor of exactly this shape.
  const TensorInfo& shaped(const std::string& name, const std::vector<int64_t>& shape);
  // Same, or nullptr if absent.
  const TensorInfo* shaped_if_present(const std::string& name, const std::vector<int64_t>& shape);
  // "<prefix>.weight", or "<prefix>.inner.weight" where the seed crate (moxin-vlm-mlx
  // save_quantized) wrote a quantized linear's codes.
  std::string linear_weight_name(const std::string& prefix) const;
  // Rows of that weight, dense or packed (for deriving dimensions before mapping it).
  int64_t out_features(const std::string& prefix);

  NormWeight norm(const std::string& prefix, int64_t dim, bool with_bias);
  LinearWeight dense_linear(const std::string& prefix, int64_t out, int64_t in, bool with_bias);
  // Dense, quantized when "<prefix>.scales" exists, or fp8 when "<prefix>.weight_scale" does
  // (then `quant` must be non-null and agree).
  LinearWeight decoder_linear(const std::string& prefix, int64_t out, int64_t in,
                              const QuantizationConfig* quant);

  // Throws if the tensor's shape differs from `shape`; `note` is appended to the message.
  void expect_shape(const TensorInfo& t, const std::vector<int64_t>& shape,
                    const std::string& note = "") const;
  // Tensors no lookup has touched, in name order.
  std::vector<const TensorInfo*> unused() const;
  const std::string& dir() const { return dir_; }

 private:
  const TensorInfo& claim(const std::string& name, const std::string& expected);
  LinearWeight fp8_linear(const std::string& prefix, int64_t out, int64_t in, const QuantizationConfig* quant);
  void expect_float(const TensorInfo& t) const;

  TensorStore& store_;
  std::string dir_;
  std::set<std::string> claimed_;
};

}  // namespace moxin
