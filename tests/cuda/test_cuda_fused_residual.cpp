// A decoder layer's residual steps fused into its decode linears (Backend::rms_norm_linear,
// rms_norm_linear_swiglu, linear_add): where the backend says it fuses them (1..2 rows on the
// GEMV), each must give exactly the bits of the separate ops (rms_norm then linear, linear then
// add) and match the f64 reference to f32 rounding; elsewhere the separate ops run. The norm's
// summation order is reproduced by blocks of another size, so the widths cover one float4 per
// reproduced thread (4096), several (11264) and fewer threads than the GEMV block has (256).
#include <cmath>
#include <tuple>

#include "backend/cuda/cuda_backend.hpp"
#include "core/check.hpp"
#include "cuda_test_support.hpp"

namespace moxin::cuda_test {
namespace {

constexpr double kF32Tol = 1e-5;
// Where the separate ops run, 2..8 rows take the skinny GEMM or cuBLASLt, which round the
// activations to bf16 (test_cuda_linear.cpp bounds that: 4e-3 against the exact activations).
constexpr double kSeparateTol = 4e-3;
constexpr float kEps = 1e-5f;

using Shape = std::tuple<int64_t, int64_t, int64_t>;  // rows, outputs, inputs

class CudaFusedResidual : public CudaOpsTest {
 protected:
  void TearDown() override {  // also runs for a test skipped for want of a GPU (no backend)
    if (backend_ == nullptr) return;
    set_cuda_fused_residual(*backend_, true);
    set_cuda_linear_path(*backend_, CudaLinearPath::Auto);
  }

  // x [m, k] times w [n, k] (+ bias) in f64.
  static std::vector<double> product_ref(const std::vector<double>& x, int64_t m, int64_t k,
                                         const std::vector<float>& w, int64_t n, const std::vector<float>* bias) {
    std::vector<double> y(static_cast<size_t>(m * n));
    for (int64_t r = 0; r < m; ++r)
      for (int64_t o = 0; o < n; ++o) {
        double acc = bias ? (*bias)[o] : 0.0;
        for (int64_t i = 0; i < k; ++i) acc += x[r * k + i] * w[o * k + i];
        y[r * n + o] = acc;
      }
    return y;
  }

  void check_norm_in(int64_t m, int64_t n, int64_t k, bool with_bias, bool gated, bool expect_fused) {
    const std::string what = cat(gated ? "rms_norm_linear_swiglu" : "rms_norm_linear", " M=", m, " N=", n, " K=", k,
                                 with_bias ? " +bias" : "");
    const int64_t rows_out = gated ? 2 * n : n;
    HostTensor w = host_tensor("w", {rows_out, k}, DType::BF16, true, 0.05f);
    HostTensor b = host_tensor("b", {rows_out}, DType::F32, false, 0.5f);
    const Linear prepared = prepare(w, with_bias ? &b : nullptr);
    EXPECT_EQ(backend().fuses_rms_norm_into(prepared, m), expect_fused) << what;
    std::vector<float> g = uniform(static_cast<size_t>(k), 0.5f, 1.5f);
    const Tensor norm_w = upload(g, {k});
    const std::vector<float> x = residual_rows(static_cast<size_t>(m * k));
    const Tensor xt = upload(x, {m, k});
    const DType normed_dtype = backend().linear_input_dtype(prepared, m);

    Tensor normed = backend().empty({m, k}, normed_dtype), gate_up = poisoned({m, rows_out});
    Tensor fused = poisoned({m, n});
    Tensor separate_normed = backend().empty({m, k}, normed_dtype), separate_gu = poisoned({m, rows_out});
    Tensor separate = poisoned({m, n});
    backend().rms_norm(xt, norm_w, kEps, separate_normed);
    if (gated) {
      backend().rms_norm_linear_swiglu(xt, norm_w, kEps, prepared, normed, gate_up, fused);
      backend().linear_swiglu(separate_normed, prepared, separate_gu, separate);
    } else {
      backend().rms_norm_linear(xt, norm_w, kEps, prepared, normed, fused);
      backend().linear(separate_normed, prepared, separate);
    }
    const std::vector<float> got = download(fused);
    EXPECT_EQ(got, download(separate)) << what << ": fused bits differ from the separate ops";
    EXPECT_EQ(download(xt), x) << what << ": the residual rows changed";

    const std::vector<double> y = product_ref(rms_norm_ref(x, g, m, k, kEps), m, k, w.values, rows_out,
                                              with_bias ? &b.values : nullptr);
    const std::vector<double> ref = gated ? swiglu_ref(y, m, n) : y;
    expect_close(what, got, ref, expect_fused ? kF32Tol : kSeparateTol);
  }

  void check_add_out(int64_t m, int64_t n, int64_t k, bool with_bias, bool expect_fused) {
    const std::string what = cat("linear_add M=", m, " N=", n, " K=", k, with_bias ? " +bias" : "");
    HostTensor w = host_tensor("w", {n, k}, DType::BF16, true, 0.05f);
    HostTensor b = host_tensor("b", {n}, DType::F32, false, 0.5f);
    const Linear prepared = prepare(w, with_bias ? &b : nullptr);
    EXPECT_EQ(backend().fuses_add_into(prepared, m), expect_fused) << what;
    const std::vector<float> a = randn(static_cast<size_t>(m * k));
    const std::vector<float> x = residual_rows(static_cast<size_t>(m * n));
    const Tensor at = upload(a, {m, k});

    Tensor fused = upload(x, {m, n}), out = poisoned({m, n});
    backend().linear_add(at, prepared, out, fused);
    Tensor separate = upload(x, {m, n}), separate_out = poisoned({m, n});
    backend().linear(at, prepared, separate_out);
    backend().add(separate, separate_out);
    const std::vector<float> got = download(fused);
    EXPECT_EQ(got, download(separate)) << what << ": fused bits differ from linear + add";

    std::vector<double> ad(a.begin(), a.end());
    std::vector<double> ref = product_ref(ad, m, k, w.values, n, with_bias ? &b.values : nullptr);
    for (size_t i = 0; i < ref.size(); ++i) ref[i] += x[i];
    expect_close(what, got, ref, expect_fused ? kF32Tol : kSeparateTol);
  }
};

// Two rows reach the GEMV only where it is forced (Auto takes the skinny GEMM or cuBLASLt there).
TEST_F(CudaFusedResidual, NormBeforeTheLinearGivesTheSeparateBits) {
  set_cuda_linear_path(backend(), CudaLinearPath::Gemv);
  for (const auto& [m, n, k] : {Shape{1, 96, 256}, {2, 33, 1024}, {1, 300, 4096}, {1, 17, 11264}, {2, 64, 4104},
                                {1, 5, 8}, {int64_t{randint(1, 2)}, int64_t{randint(1, 400)}, 8 * int64_t{randint(1, 704)}}})
    for (const bool with_bias : {false, true}) {
      check_norm_in(m, n, k, with_bias, false, true);
      check_norm_in(m, n, k, with_bias, true, true);
    }
}

TEST_F(CudaFusedResidual, AddAfterTheLinearGivesTheSeparateBits) {
  set_cuda_linear_path(backend(), CudaLinearPath::Gemv);
  for (const auto& [m, n, k] : {Shape{1, 96, 256}, {2, 33, 1024}, {1, 4096, 14336}, {1, 1, 8},
                                {int64_t{randint(1, 2)}, int64_t{randint(1, 400)}, 8 * int64_t{randint(1, 2000)}}})
    for (const bool with_bias : {false, true}) check_add_out(m, n, k, with_bias, true);
}

// Where the fused kernel does not run (rows the unfused linear gives another kernel, more rows
// than it takes, inputs not a multiple of 8, a normalized copy larger than its shared memory, or
// switched off), the same ops give the separate ops' bits through the separate kernels.
TEST_F(CudaFusedResidual, ElsewhereTheSeparateOpsRun) {
  for (const auto& [m, n, k] : {Shape{2, 40, 64}, {3, 40, 64}, {8, 20, 512}, {1, 20, 100}, {1, 16, 11272}}) {
    check_norm_in(m, n, k, true, false, false);
    check_norm_in(m, n, k, false, true, false);
    if (k != 11272) check_add_out(m, n, k, true, false);  // the add has no normalized copy to fit
  }
  check_add_out(1, 16, 11272, false, true);
  set_cuda_fused_residual(backend(), false);
  check_norm_in(1, 96, 256, false, false, false);
  check_norm_in(1, 96, 256, false, true, false);
  check_add_out(1, 96, 256, false, false);
}

}  // namespace
}  // namespace moxin::cuda_test
