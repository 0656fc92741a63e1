// Quantized linear on the CPU (both GEMV and dequantize-then-GEMM regimes) against a double
// matmul on the dequantized weights, for 4/8 bits x group 64/128 at awkward shapes, every
// kernel table and 1 or 2 threads; plus the quantizer's own error bound.
#include "quant/affine_quant.hpp"
#include "test_cpu_common.hpp"

namespace moxin::cpu_test {
namespace {

struct QuantCase {
  QuantizedMatrix matrix;
  TensorInfo codes, scales, biases;
  std::vector<float> dequantized;  // [N, K]

  LinearWeight linear() const {
    LinearWeight w;
    w.weight = &codes;
    w.scales = &scales;
    w.qbiases = &biases;
    w.bits = matrix.bits;
    w.group_size = matrix.group_size;
    w.out_features = matrix.rows;
    w.in_features = matrix.cols;
    return w;
  }
};

std::unique_ptr<QuantCase> make_quant_case(const OwnedTensor& w, int64_t N, int64_t K, int bits, int group) {
  auto c = std::make_unique<QuantCase>();
  c->matrix = quantize_matrix(w.info.data, w.info.dtype, N, K, bits, group, nullptr, "w");
  const QuantizedMatrix& m = c->matrix;
  c->codes = TensorInfo{"w.weight", DType::U32, {N, K * bits / 32}, reinterpret_cast<const uint8_t*>(m.codes.data()),
                        m.codes.size() * 4, "test"};
  c->scales = TensorInfo{"w.scales", m.scale_dtype, {N, K / group}, m.scales.data(), m.scales.size(), "test"};
  c->biases = TensorInfo{"w.biases", m.scale_dtype, {N, K / group}, m.biases.data(), m.biases.size(), "test"};
  c->dequantized.resize(static_cast<size_t>(N * K));
  dequantize_rows(m.view(), 0, N, c->dequantized.data());
  return c;
}

// The GEMV sums scale * sum(q x) + bias * sum(x) per group instead of sum((scale q + bias) x):
// both are f32 sums of K products, so they agree to f32 accumulation error, which scales with
// sum |x| |w| (not with |y|, which cancellation can make arbitrarily small).
constexpr double kToleranceOfAbsSum = 1e-6;

TEST(QuantLinear, MatchesMatmulOnDequantizedWeights) {
  Random rng(test_seed());
  struct Shape {
    int64_t M, N;
    int groups;
  };
  const std::vector<Shape> shapes{{1, 1, 1}, {1, 37, 3}, {3, 17, 2}, {8, 33, 5}, {9, 7, 1}, {33, 65, 3}};
  for (int bits : {4, 8})
    for (int group : {64, 128})
      for (DType dtype : {DType::BF16, DType::F32})
        for (const Shape& s : shapes) {
          const int64_t K = s.groups * group;
          auto w = make_tensor("w", dtype, {s.N, K}, rng.uniform(static_cast<size_t>(s.N * K), -0.5f, 1.5f));
          auto q = make_quant_case(*w, s.N, K, bits, group);
          const std::vector<float> x = rng.uniform(static_cast<size_t>(s.M * K));
          std::vector<double> ref(static_cast<size_t>(s.M * s.N));
          double ref_norm = 0, abs_norm = 0;
          for (int64_t m = 0; m < s.M; ++m)
            for (int64_t n = 0; n < s.N; ++n) {
              double sum = 0, abs_sum = 0;
              for (int64_t k = 0; k < K; ++k) {
                const double p = static_cast<double>(x[m * K + k]) * q->dequantized[n * K + k];
                sum += p;
                abs_sum += std::abs(p);
              }
              ref[m * s.N + n] = sum;
              ref_norm += sum * sum;
              abs_norm += abs_sum * abs_sum;
            }
          expect_matches(cat("quantized linear ", bits, "-bit g", group, " ", dtype_name(dtype), " M=", s.M,
                             " N=", s.N, " K=", K),
                         ref, kToleranceOfAbsSum * std::sqrt(abs_norm / ref_norm), [&](Backend& be) {
                           const Linear l = be.prepare_linear(q->linear());
                           Tensor xt = be.from_host_f32(x.data(), {s.M, K});
                           Tensor y = poisoned(be, {s.M, s.N});
                           be.linear(xt, l, y);
                           return host(be, y);
                         });
        }
}

// Every dequantized weight lies within half a step (plus the bf16 rounding of the bias, which
// the codes absorb) of the original: checks codes, packing and scale/bias placement together.
TEST(QuantLinear, QuantizationErrorWithinHalfAStep) {
  Random rng(test_seed());
  for (int bits : {4, 8})
    for (int group : {64, 128}) {
      const int64_t N = 5, K = 2 * group;
      auto w = make_tensor("w", DType::F32, {N, K}, rng.uniform(static_cast<size_t>(N * K), -2.0f, 3.0f));
      auto q = make_quant_case(*w, N, K, bits, group);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) {
          const float scale = load_scale(q->matrix.scales.data(), DType::F32, n * (K / group) + k / group);
          EXPECT_LE(std::abs(q->dequantized[n * K + k] - w->values[n * K + k]), 0.5f * scale * (1 + 1e-5f))
              << bits << "-bit g" << group << " row " << n << " col " << k;
        }
    }
}

TEST(QuantLinear, RefusesBadFormats) {
  auto w = make_tensor("w", DType::F32, {2, 64}, std::vector<float>(128, 1.0f));
  expect_error([&] { quantize_matrix(w->info.data, DType::F32, 2, 64, 3, 64, nullptr, "w"); }, "bits 3");
  expect_error([&] { quantize_matrix(w->info.data, DType::F32, 2, 64, 4, 32, nullptr, "w"); }, "group size 32");
  expect_error([&] { quantize_matrix(w->info.data, DType::F32, 1, 96, 4, 64, nullptr, "w"); }, "multiple of the group size");
}

}  // namespace
}  // namespace moxin::cpu_test
