// Ops that read a prepared weight matrix: linear (a fused Linear runs one matmul per part, each
// into its column range of y), patch_embed (im2col + the same GEMM) and embedding (rows of the
// table converted to f32).
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_backend_impl.hpp"
#include "backend/cpu/cpu_checks.hpp"
#include "backend/cpu/cpu_matmul.hpp"
#include "backend/cpu/cpu_quant_kernels.hpp"
#include "core/bf16.hpp"

namespace moxin::cpu {
namespace {

// One weight matrix: y[m * ldy + n] for its rows n.
void multiply(const Kernels& kernels, ThreadPool& pool, const Tensor& x, const CpuLinear& l, float* y,
              int64_t ldy) {
  const float* bias = l.bias.empty() ? nullptr : l.bias.data();
  if (l.quant.bits != 0)
    quant_matmul(kernels, &pool, x.rows(), x.ptr<float>(), x.cols(), l.quant, bias, y, ldy);
  else
    matmul(kernels, &pool, x.rows(), x.ptr<float>(), x.cols(), l.weight, bias, y, ldy);
  if (l.channel_scales.empty()) return;
  const float* scale = l.channel_scales.data();
  for (int64_t m = 0; m < x.rows(); ++m)
    for (int64_t n = 0; n < l.weight.rows; ++n) y[m * ldy + n] *= scale[n];
}

// Ops other than linear read the one matrix of an unfused Linear.
void require_unfused(const CpuLinear& l, const char* op) {
  MOXIN_CHECK(l.parts.empty(), "[cpu] ", op, ": '", l.name, "' is a fused Linear; ", op,
              " needs one prepared with prepare_linear");
}

}  // namespace

void CpuBackend::linear(const Tensor& x, const Linear& w, Tensor& y) {
  const CpuLinear& l = cpu_linear(w, "linear");
  check_f32(x, "linear", "x");
  check_f32(y, "linear", "y");
  MOXIN_CHECK(x.cols() == l.weight.cols, "[cpu] linear: x is ", x.shape_str(), " but the weight '",
              l.name, "' expects ", l.weight.cols, " input features");
  MOXIN_CHECK(y.cols() == l.weight.rows && y.rows() == x.rows(), "[cpu] linear: y is ", y.shape_str(),
              " but x ", x.shape_str(), " times the weight '", l.name, "' gives [", x.rows(), ", ",
              l.weight.rows, "]");
  MOXIN_CHECK(!overlaps(x, y), "[cpu] linear: y must not overlap x");
  if (l.parts.empty()) {
    multiply(kernels_, pool_, x, l, y.ptr<float>(), y.cols());
    return;
  }
  int64_t column = 0;
  for (const auto& part : l.parts) {
    multiply(kernels_, pool_, x, *part, y.ptr<float>() + column, y.cols());
    column += part->weight.rows;
  }
}

void CpuBackend::patch_embed(const Tensor& images, const Linear& w, int patch, Tensor& y) {
  const CpuLinear& l = cpu_linear(w, "patch_embed");
  require_unfused(l, "patch_embed");
  check_f32(images, "patch_embed", "images");
  check_f32(y, "patch_embed", "y");
  MOXIN_CHECK(images.shape.size() == 4 && images.shape[3] == 3, "[cpu] patch_embed: images are ",
              images.shape_str(), "; expected [batch, height, width, 3] (NHWC)");
  MOXIN_CHECK(patch > 0, "[cpu] patch_embed: patch size ", patch, " must be positive");
  const int64_t B = images.shape[0], H = images.shape[1], W = images.shape[2], p = patch;
  MOXIN_CHECK(H % p == 0 && W % p == 0, "[cpu] patch_embed: image size ", H, "x", W,
              " is not a multiple of the patch size ", p);
  const int64_t patch_len = 3 * p * p;
  MOXIN_CHECK(l.weight.cols == patch_len, "[cpu] patch_embed: weight '", l.name, "' has ", l.weight.cols,
              " inputs but a ", p, "x", p, " RGB patch has ", patch_len);
  const int64_t gh = H / p, gw = W / p, num_patches = B * gh * gw;
  MOXIN_CHECK(y.rows() == num_patches && y.cols() == l.weight.rows, "[cpu] patch_embed: y is ",
              y.shape_str(), " but ", B, " images of ", gh, "x", gw, " patches give [", num_patches,
              ", ", l.weight.rows, "]");
  // im2col in the conv weight's (channel, kh, kw) order.
  std::vector<float> columns(static_cast<size_t>(num_patches * patch_len));
  const float* img = images.ptr<float>();
  pool_.parallel_for(num_patches, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / (gh * gw), py = i / gw % gh, px = i % gw;
      float* col = columns.data() + i * patch_len;
      for (int64_t c = 0; c < 3; ++c)
        for (int64_t kh = 0; kh < p; ++kh) {
          const float* src = img + ((b * H + py * p + kh) * W + px * p) * 3 + c;
          for (int64_t kw = 0; kw < p; ++kw) col[(c * p + kh) * p + kw] = src[kw * 3];
        }
    }
  }, 16);
  matmul(kernels_, &pool_, num_patches, columns.data(), patch_len, l.weight,
         l.bias.empty() ? nullptr : l.bias.data(), y.ptr<float>(), y.cols());
}

namespace {

// Each row's id: ids[t], or drawn[sources[t]] where the row's token is one a sampler drew.
std::vector<int32_t> drawn_ids(const Tensor& ids, const DrawnTokens& from) {
  const int32_t* id = ids.ptr<int32_t>();
  std::vector<int32_t> out(id, id + ids.numel());
  if (!from.sources) return out;
  MOXIN_CHECK(from.drawn && from.sources->dtype == DType::I32 && from.drawn->dtype == DType::I32 &&
                  from.sources->numel() == ids.numel(),
              "[cpu] embedding: drawn tokens need I32 sources [", ids.numel(), "] and an I32 drawn tensor");
  const int32_t* source = from.sources->ptr<int32_t>();
  for (size_t t = 0; t < out.size(); ++t) {
    if (source[t] < 0) continue;
    MOXIN_CHECK(source[t] < from.drawn->numel(), "[cpu] embedding: row ", t, " takes drawn token ", source[t],
                " of ", from.drawn->numel());
    out[t] = from.drawn->ptr<int32_t>()[source[t]];
  }
  return out;
}

}  // namespace

void CpuBackend::embedding(const Tensor& ids, const Linear& table, Tensor& y, const DrawnTokens& from) {
  const CpuLinear& l = cpu_linear(table, "embedding");
  require_unfused(l, "embedding");
  check_dtype(ids, DType::I32, "embedding", "ids");
  check_f32(y, "embedding", "y");
  const int64_t T = ids.numel(), vocab = l.weight.rows, dim = l.weight.cols;
  MOXIN_CHECK(y.rows() == T && y.cols() == dim, "[cpu] embedding: y is ", y.shape_str(), " but ", T,
              " ids of the table '", l.name, "' give [", T, ", ", dim, "]");
  const std::vector<int32_t> resolved = drawn_ids(ids, from);
  const int32_t* id = resolved.data();
  for (int64_t t = 0; t < T; ++t)
    MOXIN_CHECK(id[t] >= 0 && id[t] < vocab, "[cpu] embedding: id ", id[t], " (position ", t,
                ") is outside the table '", l.name, "' of ", vocab, " rows");
  const WeightView& w = l.weight;
  for (int64_t t = 0; t < T; ++t) {
    float* out = y.ptr<float>() + t * dim;
    const int64_t offset = id[t] * w.ld;
    switch (w.dtype) {
      case DType::F32:
        std::memcpy(out, static_cast<const float*>(w.data) + offset, static_cast<size_t>(dim) * 4);
        break;
      case DType::BF16: {
        const uint16_t* row = static_cast<const uint16_t*>(w.data) + offset;
        for (int64_t i = 0; i < dim; ++i) out[i] = bf16_to_f32(row[i]);
        break;
      }
      case DType::F16: {
        const uint16_t* row = static_cast<const uint16_t*>(w.data) + offset;
        for (int64_t i = 0; i < dim; ++i) out[i] = f16_to_f32(row[i]);
        break;
      }
      default:
        fail("[cpu] embedding: table '", l.name, "' of dtype ", dtype_name(w.dtype), " is not supported");
    }
  }
}

}  // namespace moxin::cpu
