// Backend::layer_tail: everything after a decoder layer's attention up to the next layer's qkv
// (x += o(attn); x += down(swiglu(gate_up(rms_norm(x)))); qkv = qkv'(rms_norm'(x))). Where the
// CUDA backend runs it as one persistent launch (bf16 weights at 1..2 rows on the GEMV), the
// results must be the bits of the fused ops run one by one, and match an f64 reference of the
// chain to f32 rounding; launched again and again (eagerly and replayed from a graph) the grid
// barrier's words must come back ready.
#include <cmath>
#include <string>

#include "backend/cuda/cuda_backend.hpp"
#include "core/check.hpp"
#include "cuda_test_support.hpp"

namespace moxin::cuda_test {
namespace {

constexpr double kF32Tol = 1e-5;
constexpr float kEps = 1e-5f;

struct TailShape {
  int64_t rows, hidden, attn_width, inter, qkv_width;
};

class CudaLayerTail : public CudaOpsTest {
 protected:
  void TearDown() override {
    if (backend_ == nullptr) return;
    set_cuda_layer_tail(*backend_, true);
    set_cuda_linear_path(*backend_, CudaLinearPath::Auto);
  }

  struct Weights {
    HostTensor o, o_b, gate_up, gate_up_b, down, down_b, qkv, qkv_b;
    std::vector<float> post_norm, next_norm;
    Linear o_l, gate_up_l, down_l, qkv_l;
    Tensor post_norm_t, next_norm_t;
  };

  Weights make_weights(const TailShape& s, bool with_bias) {
    Weights w;
    w.o = host_tensor("o", {s.hidden, s.attn_width}, DType::BF16, true, 0.05f);
    w.o_b = host_tensor("o_b", {s.hidden}, DType::F32, false, 0.5f);
    w.gate_up = host_tensor("gate_up", {2 * s.inter, s.hidden}, DType::BF16, true, 0.05f);
    w.gate_up_b = host_tensor("gate_up_b", {2 * s.inter}, DType::F32, false, 0.5f);
    w.down = host_tensor("down", {s.hidden, s.inter}, DType::BF16, true, 0.05f);
    w.down_b = host_tensor("down_b", {s.hidden}, DType::F32, false, 0.5f);
    w.qkv = host_tensor("qkv", {s.qkv_width, s.hidden}, DType::BF16, true, 0.05f);
    w.qkv_b = host_tensor("qkv_b", {s.qkv_width}, DType::F32, false, 0.5f);
    w.o_l = prepare(w.o, with_bias ? &w.o_b : nullptr);
    w.gate_up_l = prepare(w.gate_up, with_bias ? &w.gate_up_b : nullptr);
    w.down_l = prepare(w.down, with_bias ? &w.down_b : nullptr);
    w.qkv_l = prepare(w.qkv, with_bias ? &w.qkv_b : nullptr);
    w.post_norm = uniform(static_cast<size_t>(s.hidden), 0.5f, 1.5f);
    w.next_norm = uniform(static_cast<size_t>(s.hidden), 0.5f, 1.5f);
    w.post_norm_t = upload(w.post_norm, {s.hidden});
    w.next_norm_t = upload(w.next_norm, {s.hidden});
    return w;
  }

  // y[m, o] (+)= sum_i x[m, i] w[o, i] + bias[o], in f64.
  static void product_into(const std::vector<double>& x, int64_t m, int64_t k, const HostTensor& w, int64_t n,
                           const HostTensor* bias, std::vector<double>& y) {
    for (int64_t r = 0; r < m; ++r)
      for (int64_t o = 0; o < n; ++o) {
        double acc = bias ? bias->values[o] : 0.0;
        for (int64_t i = 0; i < k; ++i) acc += x[r * k + i] * w.values[o * k + i];
        y[r * n + o] += acc;
      }
  }

  static std::vector<double> rms_norm64(const std::vector<double>& x, const std::vector<float>& g, int64_t m,
                                        int64_t k) {
    std::vector<double> out(x.size());
    for (int64_t r = 0; r < m; ++r) {
      double sq = 0.0;
      for (int64_t i = 0; i < k; ++i) sq += x[r * k + i] * x[r * k + i];
      const double inv = 1.0 / std::sqrt(sq / double(k) + kEps);
      for (int64_t i = 0; i < k; ++i) out[r * k + i] = g[i] * (x[r * k + i] * inv);
    }
    return out;
  }

  // Runs layer_tail on fresh copies of x and attn; returns x, qkv and act after it, and whether
  // it ran as one launch.
  struct Result {
    std::vector<float> x, qkv, act;
    bool one_launch;
  };
  Result run(const TailShape& s, Weights& w, const std::vector<float>& x, const std::vector<float>& attn, bool next,
             int repeats = 1, bool graph = false) {
    Tensor xt = upload(x, {s.rows, s.hidden}), at = upload(attn, {s.rows, s.attn_width});
    Tensor out = poisoned({s.rows, s.hidden}), normed = poisoned({s.rows, s.hidden});
    Tensor gu = poisoned({s.rows, 2 * s.inter}), act = poisoned({s.rows, s.inter});
    Tensor qkv = poisoned({s.rows, s.qkv_width});
    Backend::LayerTail t;
    t.o = &w.o_l;
    t.post_norm = &w.post_norm_t;
    t.gate_up = &w.gate_up_l;
    t.down = &w.down_l;
    t.next_norm = next ? &w.next_norm_t : nullptr;
    t.next_qkv = next ? &w.qkv_l : nullptr;
    t.eps = kEps;
    t.out = &out;
    t.normed = &normed;
    t.gate_up_out = &gu;
    t.act = &act;
    const size_t launches = cuda_layer_tail_launches(backend());
    const auto step = [&] { backend().layer_tail(at, t, xt, qkv); };
    if (graph) {
      auto g = capture_cuda_graph(backend(), step);
      for (int i = 0; i < repeats; ++i) g->replay();
    } else {
      for (int i = 0; i < repeats; ++i) step();
    }
    return {download(xt), next ? download(qkv) : std::vector<float>{}, download(act),
            cuda_layer_tail_launches(backend()) > launches};
  }

  // f64_check: also against the f64 chain (false where the ops one by one take bf16 activations:
  // the skinny GEMM or cuBLASLt at 2+ rows, whose rounding test_cuda_linear.cpp bounds).
  void check(const TailShape& s, bool with_bias, bool next, bool expect_one_launch, bool f64_check = true) {
    const std::string what = cat("layer_tail M=", s.rows, " hidden=", s.hidden, " attn=", s.attn_width,
                                 " inter=", s.inter, " qkv=", s.qkv_width, with_bias ? " +bias" : "",
                                 next ? "" : " (last layer)");
    Weights w = make_weights(s, with_bias);
    const std::vector<float> x = residual_rows(static_cast<size_t>(s.rows * s.hidden));
    const std::vector<float> attn = randn(static_cast<size_t>(s.rows * s.attn_width));

    const Result tail = run(s, w, x, attn, next);
    EXPECT_EQ(tail.one_launch, expect_one_launch) << what << ": the path taken";
    set_cuda_layer_tail(backend(), false);
    const Result ops = run(s, w, x, attn, next);
    set_cuda_layer_tail(backend(), true);
    EXPECT_FALSE(ops.one_launch) << what;
    EXPECT_EQ(tail.x, ops.x) << what << ": x differs from the fused ops one by one";
    EXPECT_EQ(tail.act, ops.act) << what << ": act differs from the fused ops one by one";
    EXPECT_EQ(tail.qkv, ops.qkv) << what << ": qkv differs from the fused ops one by one";
    if (!f64_check) return;

    // The chain in f64.
    const HostTensor* no_bias = nullptr;
    std::vector<double> x1(x.begin(), x.end());
    product_into(std::vector<double>(attn.begin(), attn.end()), s.rows, s.attn_width, w.o, s.hidden,
                 with_bias ? &w.o_b : no_bias, x1);
    std::vector<double> gu(static_cast<size_t>(s.rows * 2 * s.inter), 0.0);
    product_into(rms_norm64(x1, w.post_norm, s.rows, s.hidden), s.rows, s.hidden, w.gate_up, 2 * s.inter,
                 with_bias ? &w.gate_up_b : no_bias, gu);
    const std::vector<double> act = swiglu_ref(gu, s.rows, s.inter);
    std::vector<double> x2 = x1;
    product_into(act, s.rows, s.inter, w.down, s.hidden, with_bias ? &w.down_b : no_bias, x2);
    expect_close(what + " x", tail.x, x2, kF32Tol);
    expect_close(what + " act", tail.act, act, kF32Tol);
    if (next) {
      std::vector<double> qkv(static_cast<size_t>(s.rows * s.qkv_width), 0.0);
      product_into(rms_norm64(x2, w.next_norm, s.rows, s.hidden), s.rows, s.hidden, w.qkv, s.qkv_width,
                   with_bias ? &w.qkv_b : no_bias, qkv);
      expect_close(what + " qkv", tail.qkv, qkv, kF32Tol);
    }
  }
};

// Two rows reach the GEMV (and so the one-launch tail) only where it is forced.
TEST_F(CudaLayerTail, OneLaunchGivesTheBitsOfTheFusedOps) {
  set_cuda_linear_path(backend(), CudaLinearPath::Gemv);
  const TailShape random{randint(1, 2), 8 * randint(1, 160), 8 * randint(1, 160), 8 * randint(1, 600),
                         randint(1, 700)};
  for (const TailShape& s : {TailShape{1, 256, 256, 512, 384}, TailShape{2, 512, 384, 1376, 96},
                             TailShape{1, 4096, 4096, 14336, 6144}, TailShape{2, 1024, 1024, 2816, 1536},
                             TailShape{1, 8, 8, 8, 1}, random})
    for (const bool with_bias : {false, true})
      for (const bool next : {true, false}) check(s, with_bias, next, true);
}

// The grid barrier's words must be ready again after every launch: many launches in a row, and
// a captured graph replayed, give the op-by-op results of as many steps.
TEST_F(CudaLayerTail, RepeatedLaunchesAndGraphReplays) {
  const TailShape s{1, 1024, 1024, 2816, 1536};
  Weights w = make_weights(s, false);
  const std::vector<float> x = residual_rows(static_cast<size_t>(s.rows * s.hidden));
  const std::vector<float> attn = randn(static_cast<size_t>(s.rows * s.attn_width));
  for (const bool graph : {false, true}) {
    const Result tail = run(s, w, x, attn, true, 5, graph);
    EXPECT_TRUE(tail.one_launch);
    set_cuda_layer_tail(backend(), false);
    const Result ops = run(s, w, x, attn, true, 5, graph);
    set_cuda_layer_tail(backend(), true);
    EXPECT_EQ(tail.x, ops.x) << (graph ? "graph" : "eager") << ": five steps";
    EXPECT_EQ(tail.qkv, ops.qkv) << (graph ? "graph" : "eager") << ": five steps";
  }
}

// Where one launch does not take the operands (rows the GEMV does not run at, inputs not a
// multiple of 8, or switched off), layer_tail runs the fused ops one by one.
TEST_F(CudaLayerTail, ElsewhereTheOpsRunOneByOne) {
  check(TailShape{2, 256, 256, 512, 384}, false, true, false, false);  // Auto: two rows take the skinny GEMM
  check(TailShape{3, 64, 64, 128, 96}, false, true, false, false);
  set_cuda_linear_path(backend(), CudaLinearPath::Gemv);
  check(TailShape{1, 256, 100, 512, 384}, false, true, false);
  set_cuda_layer_tail(backend(), false);
  check(TailShape{1, 256, 256, 512, 384}, true, true, false);
}

}  // namespace
}  // namespace moxin::cuda_test
