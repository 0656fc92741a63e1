// Norms, activations, residual adds, row/column copies, gathers and RoPE against f64
// references.
//
// Tolerances (||got - ref|| / ||ref||): element-wise f32 ops 1e-6 (a few ulp from erff/expf or
// a fused multiply-add); reductions over a row (norms) 1e-5; pure copies and gathers exact (0);
// RoPE 1e-5 (angles up to 32k rad: the f32 angle itself, rounded as transformers rounds it,
// is the reference's input, so only sin/cos and the rotation round).
#include <cmath>
#include <limits>

#include "core/check.hpp"
#include "cuda_test_support.hpp"

namespace moxin::cuda_test {
namespace {

constexpr double kElementwiseTol = 1e-6;
constexpr double kRowReductionTol = 1e-5;

using CudaOps = CudaOpsTest;

std::vector<double> as_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

TEST_F(CudaOps, LayerNorm) {
  for (const auto& [rows, cols] : {std::pair{1, 31}, {3, 1024}, {33, 1152}, {257, 65}}) {
    // Offset inputs: a one-pass variance would lose digits here.
    std::vector<float> x = randn(size_t(rows) * cols, 3.0f);
    for (float& v : x) v += 40.0f;
    const std::vector<float> w = randn(cols), b = randn(cols);
    Tensor y = poisoned({rows, cols});
    const float eps = 1e-6f;
    backend().layer_norm(upload(x, {rows, cols}), upload(w, {cols}), upload(b, {cols}), eps, y);
    std::vector<double> ref(x.size());
    for (int r = 0; r < rows; ++r) {
      double mean = 0, var = 0;
      for (int c = 0; c < cols; ++c) mean += x[size_t(r) * cols + c];
      mean /= cols;
      for (int c = 0; c < cols; ++c) var += std::pow(x[size_t(r) * cols + c] - mean, 2);
      var /= cols;
      for (int c = 0; c < cols; ++c)
        ref[size_t(r) * cols + c] =
            (x[size_t(r) * cols + c] - mean) / std::sqrt(var + eps) * w[c] + b[c];
    }
    expect_close(cat("layer_norm ", rows, "x", cols), download(y), ref, kRowReductionTol);
  }
}

TEST_F(CudaOps, RmsNormAlsoInPlace) {
  for (const auto& [rows, cols] : {std::pair{1, 4096}, {5, 33}, {31, 1000}}) {
    const std::vector<float> x = randn(size_t(rows) * cols, 2.0f), w = randn(cols);
    const float eps = 1e-5f;
    std::vector<double> ref(x.size());
    for (int r = 0; r < rows; ++r) {
      double sq = 0;
      for (int c = 0; c < cols; ++c)
        sq += double(x[size_t(r) * cols + c]) * x[size_t(r) * cols + c];
      const double inv = 1.0 / std::sqrt(sq / cols + eps);
      for (int c = 0; c < cols; ++c)
        ref[size_t(r) * cols + c] = w[c] * x[size_t(r) * cols + c] * inv;
    }
    Tensor y = poisoned({rows, cols});
    backend().rms_norm(upload(x, {rows, cols}), upload(w, {cols}), eps, y);
    expect_close(cat("rms_norm ", rows, "x", cols), download(y), ref, kRowReductionTol);
    Tensor inplace = upload(x, {rows, cols});
    backend().rms_norm(inplace, upload(w, {cols}), eps, inplace);
    expect_close(cat("rms_norm in place ", rows, "x", cols), download(inplace), ref,
                 kRowReductionTol);
  }
}

TEST_F(CudaOps, GeluErf) {
  for (int n : {1, 257, 100003}) {
    const std::vector<float> x = uniform(n, -6.0f, 6.0f);
    Tensor t = upload(x, {n});
    backend().gelu_erf(t);
    std::vector<double> ref(n);
    for (int i = 0; i < n; ++i) ref[i] = 0.5 * x[i] * (1.0 + std::erf(x[i] / std::sqrt(2.0)));
    expect_close(cat("gelu_erf n=", n), download(t), ref, kElementwiseTol);
  }
}

TEST_F(CudaOps, SwigluAlsoIntoGate) {
  const int rows = 3, cols = 14336;
  const std::vector<float> g = randn(size_t(rows) * cols, 3.0f), u = randn(size_t(rows) * cols);
  std::vector<double> ref(g.size());
  for (size_t i = 0; i < g.size(); ++i) ref[i] = g[i] / (1.0 + std::exp(-double(g[i]))) * u[i];
  Tensor y = poisoned({rows, cols});
  backend().swiglu(upload(g, {rows, cols}), upload(u, {rows, cols}), y);
  expect_close("swiglu 3x14336", download(y), ref, kElementwiseTol);
  Tensor gate = upload(g, {rows, cols});
  backend().swiglu(gate, upload(u, {rows, cols}), gate);
  expect_close("swiglu into gate 3x14336", download(gate), ref, kElementwiseTol);
}

TEST_F(CudaOps, Adds) {
  const int rows = 33, cols = 65;
  const std::vector<float> x = randn(rows * cols), y = randn(rows * cols), s = randn(cols);
  std::vector<double> ref(x.size());

  Tensor t = upload(x, {rows, cols});
  backend().add(t, upload(y, {rows, cols}));
  for (size_t i = 0; i < x.size(); ++i) ref[i] = double(x[i]) + y[i];
  expect_close("add 33x65", download(t), ref, kElementwiseTol);

  t = upload(x, {rows, cols});
  backend().add_scaled(t, upload(y, {rows, cols}), upload(s, {cols}));
  for (size_t i = 0; i < x.size(); ++i) ref[i] = x[i] + double(s[i % cols]) * y[i];
  expect_close("add_scaled 33x65", download(t), ref, kElementwiseTol);

  const int table_rows = 4;
  const std::vector<float> table = randn(table_rows * cols);
  t = upload(x, {rows, cols});
  backend().add_rows_cyclic(t, upload(table, {table_rows, cols}));
  for (size_t i = 0; i < x.size(); ++i)
    ref[i] = x[i] + double(table[((i / cols) % table_rows) * cols + i % cols]);
  expect_close("add_rows_cyclic 33x65 table 4", download(t), ref, kElementwiseTol);
}

TEST_F(CudaOps, CopyRowsAndCols) {
  const std::vector<float> dst_init = randn(10 * 5), src = randn(3 * 5);
  Tensor dst = upload(dst_init, {10, 5});
  backend().copy_rows(upload(src, {3, 5}), dst, 6);
  std::vector<double> ref = as_double(dst_init);
  for (int i = 0; i < 15; ++i) ref[6 * 5 + i] = src[i];
  expect_close("copy_rows 3x5 into 10x5 at row 6", download(dst), ref, 0.0);

  const std::vector<float> wide_init = randn(7 * 10), narrow = randn(7 * 3);
  Tensor wide = upload(wide_init, {7, 10});
  backend().copy_cols(upload(narrow, {7, 3}), wide, 5);
  ref = as_double(wide_init);
  for (int r = 0; r < 7; ++r)
    for (int c = 0; c < 3; ++c) ref[r * 10 + 5 + c] = narrow[r * 3 + c];
  expect_close("copy_cols 7x3 into 7x10 at col 5", download(wide), ref, 0.0);

  Tensor small = poisoned({2, 5});
  EXPECT_THROW(backend().copy_rows(upload(src, {3, 5}), small, 0), Error);
}

TEST_F(CudaOps, GatherRows) {
  const int rows = 33, cols = 17;
  const std::vector<float> x = randn(rows * cols);
  std::vector<int32_t> idx = {5, 0, 32, 5};
  idx.push_back(randint(0, rows - 1));
  const int n = static_cast<int>(idx.size());
  Tensor y = poisoned({n, cols});
  backend().gather_rows(upload(x, {rows, cols}), upload_i32(idx, {n}), y);
  std::vector<double> ref(size_t(n) * cols);
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < cols; ++c) ref[size_t(i) * cols + c] = x[size_t(idx[i]) * cols + c];
  expect_close("gather_rows 5 of 33x17", download(y), ref, 0.0);

  // An index the host cannot check yields a NaN row, never another row's data.
  Tensor bad = poisoned({1, cols});
  backend().gather_rows(upload(x, {rows, cols}), upload_i32({rows}, {1}), bad);
  for (float v : download(bad)) EXPECT_TRUE(std::isnan(v));
}

TEST_F(CudaOps, RopeNeox) {
  struct Case {
    int tokens, q_heads, kv_heads, head_dim;
    float theta;
  };
  for (const Case& c :
       {Case{5, 4, 2, 16, 10000.0f}, Case{3, 32, 8, 128, 10000.0f}, Case{2, 2, 1, 18, 1e6f}}) {
    const int qw = c.q_heads * c.head_dim, kw = c.kv_heads * c.head_dim;
    const std::vector<float> q = randn(size_t(c.tokens) * qw), k = randn(size_t(c.tokens) * kw);
    std::vector<int32_t> pos(c.tokens);
    for (int32_t& p : pos) p = randint(0, 32767);
    pos[0] = 0;
    Tensor qt = upload(q, {c.tokens, qw}), kt = upload(k, {c.tokens, kw});
    backend().rope(qt, kt, upload_i32(pos, {c.tokens}), c.head_dim, c.theta);
    // transformers: inv_freq = 1 / theta ** (arange(0, D, 2) / D) and freqs = pos * inv_freq,
    // both in f32; out = x * cos + rotate_half(x) * sin.
    const int half = c.head_dim / 2;
    auto rotate = [&](const std::vector<float>& x, int width) {
      std::vector<double> out(x.size());
      for (int t = 0; t < c.tokens; ++t)
        for (int h = 0; h < width / c.head_dim; ++h)
          for (int i = 0; i < half; ++i) {
            const float exponent = float(2 * i) / float(c.head_dim);
            const float inv_freq =
                1.0f / static_cast<float>(std::pow(double(c.theta), double(exponent)));
            const double angle = static_cast<float>(float(pos[t]) * inv_freq);
            const size_t base = size_t(t) * width + size_t(h) * c.head_dim;
            const double x1 = x[base + i], x2 = x[base + i + half];
            out[base + i] = x1 * std::cos(angle) - x2 * std::sin(angle);
            out[base + i + half] = x2 * std::cos(angle) + x1 * std::sin(angle);
          }
      return out;
    };
    const std::string shape =
        cat("T=", c.tokens, " Hq=", c.q_heads, " Hkv=", c.kv_heads, " D=", c.head_dim);
    expect_close("rope q " + shape, download(qt), rotate(q, qw), kRowReductionTol);
    expect_close("rope k " + shape, download(kt), rotate(k, kw), kRowReductionTol);
  }
}

}  // namespace
}  // namespace moxin::cuda_test
