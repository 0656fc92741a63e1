// FP8 E4M3 linears on the CPU (docs/model.md section 5): quantize_fp8's codes and scales run
// through prepare_linear / prepare_fused_linear and linear() against a double matmul on
// e4m3(code) * scale, in the GEMV and GEMM regimes; mismatched parts are refused.
#include "core/fp8_e4m3.hpp"
#include "quant/fp8_quant.hpp"
#include "test_cpu_common.hpp"

namespace moxin::cpu_test {
namespace {

// A matrix quantize_fp8 made, with the tensors an fp8 LinearWeight points at.
struct Fp8TestMatrix {
  Fp8Matrix matrix;
  TensorInfo codes, scales;
  std::vector<float> values;  // e4m3(code) * scale, [rows, cols]

  LinearWeight linear() const {
    LinearWeight w;
    w.weight = &codes;
    w.scales = &scales;
    w.out_features = matrix.rows;
    w.in_features = matrix.cols;
    return w;
  }
};

std::unique_ptr<Fp8TestMatrix> fp8_matrix(const std::string& name, const std::vector<float>& w, int64_t rows,
                                          int64_t cols) {
  auto q = std::make_unique<Fp8TestMatrix>();
  q->matrix = quantize_fp8(w.data(), DType::F32, rows, cols, nullptr, name);
  const Fp8Matrix& m = q->matrix;
  q->codes = TensorInfo{name, DType::F8_E4M3, {rows, cols}, m.codes.data(), m.codes.size(), "test"};
  q->scales = TensorInfo{name + ".weight_scale", DType::F32, {rows}, reinterpret_cast<const uint8_t*>(m.scales.data()),
                         m.scales.size() * 4, "test"};
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k) q->values.push_back(e4m3_to_f32(m.codes[r * cols + k]) * m.scales[r]);
  return q;
}

TEST(CpuFp8Linear, FusedPartsMatchTheDequantizedWeights) {
  Random rng(test_seed());
  for (int64_t M : {1, 3, 9, 129, 300}) {
    const int64_t K = rng.integer(1, 300);
    const std::vector<int64_t> outs{rng.integer(1, 50), rng.integer(1, 50)};
    std::vector<std::unique_ptr<Fp8TestMatrix>> parts;
    for (size_t p = 0; p < outs.size(); ++p)
      parts.push_back(fp8_matrix(cat("f", p), rng.uniform(static_cast<size_t>(outs[p] * K), -0.5f, 1.5f), outs[p], K));
    const std::vector<float> x = rng.uniform(static_cast<size_t>(M * K));
    const int64_t N = outs[0] + outs[1];
    std::vector<double> ref(static_cast<size_t>(M * N));
    double ref_norm = 0, abs_norm = 0;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        const Fp8TestMatrix& part = *parts[n < outs[0] ? 0 : 1];
        const int64_t row = n < outs[0] ? n : n - outs[0];
        double sum = 0, abs_sum = 0;
        for (int64_t k = 0; k < K; ++k) {
          const double product = double(x[m * K + k]) * part.values[row * K + k];
          sum += product;
          abs_sum += std::abs(product);
        }
        ref[m * N + n] = sum;
        ref_norm += sum * sum;
        abs_norm += abs_sum * abs_sum;
      }
    // An f32 sum of K products per output then one f32 multiply by the scale: bounded by
    // sum |x w| (as the quantized linear tests).
    const double tolerance = 1e-6 * std::sqrt(abs_norm / ref_norm);
    expect_matches(cat("fused fp8 linear M=", M, " K=", K, " N=", outs[0], "|", outs[1]), ref, tolerance,
                   [&](Backend& be) {
                     const LinearWeight a = parts[0]->linear(), b = parts[1]->linear();
                     const Linear l = be.prepare_fused_linear({&a, &b});
                     Tensor y = poisoned(be, {M, N});
                     be.linear(be.from_host_f32(x.data(), {M, K}), l, y);
                     return host(be, y);
                   });
  }
}

TEST(CpuFp8Linear, RefusesMalformedAndMismatchedParts) {
  Random rng(test_seed());
  auto backend = create_cpu_backend(1);
  const auto f = fp8_matrix("f", rng.uniform(4 * 128), 4, 128);
  const auto dense = make_tensor("a", DType::BF16, {4, 128}, rng.uniform(4 * 128));
  LinearWeight wd;
  wd.weight = &dense->info;
  wd.out_features = 4;
  wd.in_features = 128;
  const LinearWeight wf = f->linear();
  expect_error([&] { backend->prepare_fused_linear({&wd, &wf}); }, "'f' (fp8, 128 inputs) cannot join 'a' (float");
  LinearWeight bad = wf;
  TensorInfo short_scales = f->scales;
  short_scales.nbytes -= 4;
  bad.scales = &short_scales;
  expect_error([&] { backend->prepare_linear(bad); }, "needs an F32 weight_scale of 4 values");
  bad = wf;
  bad.bias = &f->scales;
  expect_error([&] { backend->prepare_linear(bad); }, "with a bias is not supported");
  bad = wf;
  bad.in_features = 64;
  expect_error([&] { backend->prepare_linear(bad); }, "but the layer is [4, 64]");
}

TEST(CpuFp8Linear, QuantizerRefusesNonFiniteWeights) {
  std::vector<float> w(64, 0.5f);
  w[17] = std::numeric_limits<float>::infinity();
  expect_error([&] { quantize_fp8(w.data(), DType::F32, 2, 32, nullptr, "w"); },
               "'w' holds inf at [0, 17]; only finite weights can be quantized to fp8");
}

}  // namespace
}  // namespace moxin::cpu_test
