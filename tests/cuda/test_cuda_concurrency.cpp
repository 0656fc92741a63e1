// Backend::run_concurrently on CUDA: branches on their own streams, each with its own cuBLASLt
// workspace and bf16 scratch. Each branch runs a linear large enough to go through cuBLASLt (its
// activations converted into the lane's scratch) on its own input: every result must match the
// f64 reference (activations rounded to bf16 as the GEMM rounds them; 1e-5, as in
// test_cuda_linear.cpp) and equal, bit for bit, the same ops issued one after another, eagerly
// and replayed from a captured graph with fresh inputs. Shared scratch between the branches
// would make the results depend on the interleaving.
#include <functional>

#include "backend/cuda/cuda_backend.hpp"
#include "core/check.hpp"
#include "cuda_test_support.hpp"

namespace moxin::cuda_test {
namespace {

constexpr double kF32Tol = 1e-5;

class CudaConcurrency : public CudaOpsTest {
 protected:
  static constexpr int kBranches = 3;
  int64_t m = 0, n = 0, k = 0;
  std::vector<HostTensor> weights;
  std::vector<Linear> linears;
  std::vector<Tensor> inputs, outputs;

  void make(int64_t rows, int64_t out, int64_t in) {
    m = rows;
    n = out;
    k = in;
    for (int b = 0; b < kBranches; ++b) {
      weights.push_back(host_tensor(cat("w", b), {n, k}, DType::BF16, true, 0.05f));
      linears.push_back(prepare(weights.back()));
      inputs.push_back(poisoned({m, k}));
      outputs.push_back(poisoned({m, n}));
    }
  }

  // Fresh inputs, written in place (a captured graph reads them from the same addresses).
  std::vector<std::vector<float>> refill() {
    std::vector<std::vector<float>> xs;
    for (int b = 0; b < kBranches; ++b) {
      xs.push_back(randn(static_cast<size_t>(m * k)));
      backend().copy_rows(upload(xs.back(), {m, k}), inputs[b], 0);
    }
    return xs;
  }

  std::vector<std::function<void()>> branches() {
    std::vector<std::function<void()>> out;
    for (int b = 0; b < kBranches; ++b) out.push_back([this, b] { backend().linear(inputs[b], linears[b], outputs[b]); });
    return out;
  }

  std::vector<double> reference(int b, const std::vector<float>& x) const {
    std::vector<double> y(static_cast<size_t>(m * n));
    for (int64_t r = 0; r < m; ++r)
      for (int64_t o = 0; o < n; ++o) {
        double acc = 0.0;
        for (int64_t i = 0; i < k; ++i)
          acc += double(round_bf16(x[r * k + i])) * weights[b].values[o * k + i];
        y[r * n + o] = acc;
      }
    return y;
  }

  // Runs the branches concurrently (through `run`), then one after another, and checks both.
  void check(const std::string& what, const std::function<void()>& run) {
    const std::vector<std::vector<float>> xs = refill();
    run();
    std::vector<std::vector<float>> concurrent;
    for (int b = 0; b < kBranches; ++b) concurrent.push_back(download(outputs[b]));
    for (const auto& branch : branches()) branch();
    for (int b = 0; b < kBranches; ++b) {
      expect_close(cat(what, " branch ", b, " M=", m, " N=", n, " K=", k), concurrent[b], reference(b, xs[b]),
                   kF32Tol);
      EXPECT_EQ(concurrent[b], download(outputs[b])) << what << ": branch " << b << " differs from sequential";
    }
  }
};

TEST_F(CudaConcurrency, BranchesMatchTheSequentialOps) {
  make(randint(65, 300), randint(100, 700), 8 * randint(16, 160));
  const auto fns = branches();
  check("eager", [&] { backend().run_concurrently(fns); });
}

TEST_F(CudaConcurrency, CapturedBranchesReplayWithFreshInputs) {
  make(257, 384, 1024);
  const auto fns = branches();
  auto graph = capture_cuda_graph(backend(), [&] { backend().run_concurrently(fns); });
  ASSERT_NE(graph, nullptr);
  for (int round = 0; round < 2; ++round) check(cat("graph replay #", round), [&] { graph->replay(); });
}

TEST_F(CudaConcurrency, NestingIsRefusedAndLeavesTheBackendUsable) {
  const std::function<void()> inner[] = {[] {}, [] {}};
  const std::function<void()> nested[] = {[] {}, [&] { backend().run_concurrently(inner); }};
  EXPECT_THROW(backend().run_concurrently(nested), Error);
  // The backend is usable afterwards: a branch's failure joins every stream back.
  make(80, 48, 64);
  const auto fns = branches();
  check("after a refused nesting", [&] { backend().run_concurrently(fns); });
}

}  // namespace
}  // namespace moxin::cuda_test
