// prepare_fused_linear on the CPU: one Linear over several weights (q | k | v, gate | up) whose
// outputs lie side by side in y, against a double matmul per part, for float parts (any mix of
// BF16 / F16 / F32, biases on some) and quantized parts; the parts stay views of the mapped
// weights (no copy: resident memory matters on the CPU); mismatched parts are refused.
#include "quant/affine_quant.hpp"
#include "test_cpu_common.hpp"

namespace moxin::cpu_test {
namespace {

constexpr double kF32Tolerance = 1e-5;  // ~sqrt(K) f32 roundings, as the plain linear test

LinearWeight float_weight(const OwnedTensor& w, const OwnedTensor* b) {
  LinearWeight lw;
  lw.weight = &w.info;
  lw.bias = b ? &b->info : nullptr;
  lw.out_features = w.info.shape[0];
  lw.in_features = w.info.shape[1];
  return lw;
}

std::unique_ptr<QuantizedTestMatrix> quantized(const std::string& name, const std::vector<float>& values, int64_t out,
                                               int64_t in, int bits, int group) {
  return quantize_for_test(name, values.data(), DType::F32, out, in, bits, group);
}

// y[m, offset(p) + n] = bias_p[n] + sum_k x[m, k] w_p[n, k], in double; also the matching
// norm of sum |x w| per output, which bounds the f32 accumulation error.
struct Reference {
  std::vector<double> y;
  double abs_to_ref = 0;  // sqrt(sum (sum |x w|)^2 / sum y^2)
};

Reference reference(const std::vector<float>& x, int64_t M, int64_t K, const std::vector<const std::vector<float>*>& w,
                    const std::vector<const std::vector<float>*>& bias, const std::vector<int64_t>& outs) {
  int64_t N = 0;
  for (int64_t o : outs) N += o;
  Reference r;
  r.y.assign(static_cast<size_t>(M * N), 0.0);
  double ref_norm = 0, abs_norm = 0;
  for (int64_t m = 0; m < M; ++m)
    for (size_t p = 0, column = 0; p < outs.size(); column += static_cast<size_t>(outs[p]), ++p)
      for (int64_t n = 0; n < outs[p]; ++n) {
        double sum = bias[p] ? (*bias[p])[n] : 0.0, abs_sum = std::abs(sum);
        for (int64_t k = 0; k < K; ++k) {
          const double product = static_cast<double>(x[m * K + k]) * (*w[p])[n * K + k];
          sum += product;
          abs_sum += std::abs(product);
        }
        r.y[static_cast<size_t>(m * N) + column + static_cast<size_t>(n)] = sum;
        ref_norm += sum * sum;
        abs_norm += abs_sum * abs_sum;
      }
  r.abs_to_ref = std::sqrt(abs_norm / ref_norm);
  return r;
}

TEST(CpuFusedLinear, FloatPartsFillTheirColumnsAndStayViews) {
  Random rng(test_seed());
  for (int64_t M : {1, 3, 129, 300})  // GEMV and GEMM regimes
    for (size_t first_dtype = 0; first_dtype < weight_dtypes().size(); ++first_dtype) {
      const int64_t K = rng.integer(1, 300);
      const std::vector<int64_t> outs{rng.integer(1, 70), rng.integer(1, 40), rng.integer(1, 40)};
      std::vector<std::unique_ptr<OwnedTensor>> weights, biases;
      std::vector<const std::vector<float>*> w_values, b_values;
      for (size_t p = 0; p < outs.size(); ++p) {
        const DType dtype = weight_dtypes()[(first_dtype + p) % weight_dtypes().size()];
        weights.push_back(make_tensor(cat("w", p), dtype, {outs[p], K}, rng.uniform(static_cast<size_t>(outs[p] * K))));
        w_values.push_back(&weights.back()->values);
        const bool with_bias = p == 1;  // a bias on the middle part only
        biases.push_back(with_bias ? make_tensor(cat("b", p), dtype, {outs[p]}, rng.uniform(static_cast<size_t>(outs[p])))
                                   : nullptr);
        b_values.push_back(with_bias ? &biases.back()->values : nullptr);
      }
      const std::vector<float> x = rng.uniform(static_cast<size_t>(M * K));
      const Reference ref = reference(x, M, K, w_values, b_values, outs);
      const int64_t N = outs[0] + outs[1] + outs[2];
      expect_matches(cat("fused linear M=", M, " K=", K, " N=", outs[0], "|", outs[1], "|", outs[2]), ref.y,
                     kF32Tolerance, [&](Backend& be) {
                       std::vector<LinearWeight> parts;
                       for (size_t p = 0; p < outs.size(); ++p) parts.push_back(float_weight(*weights[p], biases[p].get()));
                       const Linear l = be.prepare_fused_linear({&parts[0], &parts[1], &parts[2]});
                       EXPECT_EQ(l.out_features, N);
                       EXPECT_EQ(l.in_features, K);
                       const auto& impl = *static_cast<const cpu::CpuLinear*>(l.impl.get());
                       for (size_t p = 0; p < outs.size(); ++p)
                         EXPECT_EQ(impl.parts[p]->weight.data, weights[p]->info.data) << "part " << p << " was copied";
                       Tensor y = poisoned(be, {M, N});
                       be.linear(be.from_host_f32(x.data(), {M, K}), l, y);
                       return host(be, y);
                     });
    }
}

TEST(CpuFusedLinear, QuantizedPartsFillTheirColumns) {
  Random rng(test_seed());
  for (const auto& [bits, group] : {std::pair{4, 64}, std::pair{8, 128}})
    for (int64_t M : {1, 5, 40}) {
      const int64_t K = group * rng.integer(1, 3);
      const std::vector<int64_t> outs{rng.integer(1, 50), rng.integer(1, 50)};
      std::vector<std::unique_ptr<QuantizedTestMatrix>> parts;
      std::vector<const std::vector<float>*> w_values;
      for (size_t p = 0; p < outs.size(); ++p) {
        parts.push_back(quantized(cat("q", p), rng.uniform(static_cast<size_t>(outs[p] * K), -0.5f, 1.5f), outs[p], K,
                                  bits, group));
        w_values.push_back(&parts.back()->dequantized);
      }
      const std::vector<float> x = rng.uniform(static_cast<size_t>(M * K));
      const Reference ref = reference(x, M, K, w_values, {nullptr, nullptr}, outs);
      // As the quantized linear test: an f32 sum of K products per output, bounded by sum |x w|.
      expect_matches(cat("fused ", bits, "-bit g", group, " linear M=", M, " K=", K, " N=", outs[0], "|", outs[1]),
                     ref.y, 1e-6 * ref.abs_to_ref, [&](Backend& be) {
                       const LinearWeight a = parts[0]->linear(), b = parts[1]->linear();
                       const Linear l = be.prepare_fused_linear({&a, &b});
                       Tensor y = poisoned(be, {M, outs[0] + outs[1]});
                       be.linear(be.from_host_f32(x.data(), {M, K}), l, y);
                       return host(be, y);
                     });
    }
}

TEST(CpuFusedLinear, RefusesMismatchedPartsAndNonLinearUses) {
  Random rng(test_seed());
  auto backend = create_cpu_backend(1);
  auto a = make_tensor("a", DType::BF16, {4, 128}, rng.uniform(4 * 128));
  auto narrow = make_tensor("narrow", DType::BF16, {4, 64}, rng.uniform(4 * 64));
  auto q4 = quantized("q4", rng.uniform(4 * 128), 4, 128, 4, 64);
  auto q8 = quantized("q8", rng.uniform(4 * 128), 4, 128, 8, 64);
  const LinearWeight wa = float_weight(*a, nullptr), wn = float_weight(*narrow, nullptr);
  const LinearWeight w4 = q4->linear(), w8 = q8->linear();
  expect_error([&] { backend->prepare_fused_linear({}); }, "[cpu] prepare_fused_linear: no parts");
  expect_error([&] { backend->prepare_fused_linear({&wa, &wn}); },
               "[cpu] prepare_fused_linear: 'narrow' (float, 64 inputs) cannot join 'a' (float, 128 inputs): fused "
               "parts share in_features and format");
  expect_error([&] { backend->prepare_fused_linear({&wa, &w4}); }, "'q4' (4-bit g64, 128 inputs) cannot join 'a'");
  expect_error([&] { backend->prepare_fused_linear({&w4, &w8}); }, "'q8' (8-bit g64, 128 inputs) cannot join 'q4'");
  const Linear fused = backend->prepare_fused_linear({&wa, &wa});
  Tensor x = backend->empty({1, 128}, DType::F32), y4 = backend->empty({1, 4}, DType::F32);
  expect_error([&] { backend->linear(x, fused, y4); }, "[cpu] linear: y is [1, 4] but x [1, 128] times the weight 'a + a' gives [1, 8]");
  const int32_t id = 0;
  Tensor ids = backend->from_host_i32(&id, {1});
  Tensor row = backend->empty({1, 128}, DType::F32);
  expect_error([&] { backend->embedding(ids, fused, row, {}); }, "[cpu] embedding: 'a + a' is a fused Linear");
}

}  // namespace
}  // namespace moxin::cpu_test
