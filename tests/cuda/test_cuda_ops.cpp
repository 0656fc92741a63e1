// Norms (also fused with the residual add), activations, residual adds, row/column copies,
// gathers and RoPE with the KV-cache write against f64 references.
//
// Tolerances (||got - ref|| / ||ref||): element-wise f32 ops 1e-6 (a few ulp from erff/expf or
// a fused multiply-add); reductions over a row (norms) 1e-5; pure copies and gathers exact (0);
// RoPE 1e-5 (angles up to 32k rad: the f32 angle itself, rounded as transformers rounds it,
// is the reference's input, so only sin/cos and the rotation round); the rotated k stored as
// bf16 within the bf16 unit roundoff 2^-8 of the exact rotation, v stored as bf16 exactly.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "backend/cuda/cuda_backend_impl.hpp"
#include "core/bf16.hpp"
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

// x += y and out = rms_norm(x), both checked: the reference adds and normalizes in f64.
TEST_F(CudaOps, AddRmsNorm) {
  for (const auto& [rows, cols] : {std::pair{1, 4096}, {5, 33}, {31, 1000}}) {
    const std::vector<float> x = randn(size_t(rows) * cols, 2.0f), y = randn(size_t(rows) * cols),
                             w = randn(cols);
    const float eps = 1e-5f;
    std::vector<double> sum(x.size()), ref(x.size());
    for (int r = 0; r < rows; ++r) {
      double sq = 0;
      for (int c = 0; c < cols; ++c) {
        const size_t i = size_t(r) * cols + c;
        sum[i] = double(x[i]) + y[i];
        sq += sum[i] * sum[i];
      }
      const double inv = 1.0 / std::sqrt(sq / cols + eps);
      for (int c = 0; c < cols; ++c)
        ref[size_t(r) * cols + c] = w[c] * sum[size_t(r) * cols + c] * inv;
    }
    Tensor xt = upload(x, {rows, cols});
    Tensor out = poisoned({rows, cols});
    backend().add_rms_norm(xt, upload(y, {rows, cols}), upload(w, {cols}), eps, out);
    expect_close(cat("add_rms_norm x ", rows, "x", cols), download(xt), sum, kElementwiseTol);
    expect_close(cat("add_rms_norm out ", rows, "x", cols), download(out), ref, kRowReductionTol);
  }
  Tensor x = poisoned({2, 8});
  EXPECT_THROW(backend().add_rms_norm(x, poisoned({2, 8}), poisoned({8}), 1e-5f, x), Error);
  Tensor out = poisoned({2, 8});
  EXPECT_THROW(backend().add_rms_norm(x, poisoned({2, 7}), poisoned({8}), 1e-5f, out), Error);
}

// The ops that feed a linear write bf16 where the linear multiplies bf16 activations
// (Backend::linear_input_dtype): each bf16 output must be its f32 output rounded to nearest even,
// bit for bit, so the linear's result is the one it computes from the f32 output.
// add_layer_norm: the ViT's residual step (with or without LayerScale) and the next LayerNorm in
// one kernel: the bits of add / add_scaled then layer_norm, and the f64 reference.
TEST_F(CudaOps, AddLayerNormIsTheAddThenTheNorm) {
  for (const auto& [rows, cols] : {std::pair{1, 31}, {3, 1024}, {261, 1152}, {33, 65}})
    for (const bool layerscale : {false, true}) {
      const std::string what = cat("add_layer_norm ", rows, "x", cols, layerscale ? " layerscale" : "");
      std::vector<float> x = randn(size_t(rows) * cols, 3.0f);
      for (float& v : x) v += 40.0f;  // off zero mean, as the ViT's rows are
      const std::vector<float> y = randn(size_t(rows) * cols), scale = uniform(cols, 0.01f, 1.0f),
                               w = randn(cols), b = randn(cols);
      const float eps = 1e-6f;
      const Tensor yt = upload(y, {rows, cols}), st = upload(scale, {cols}), wt = upload(w, {cols}),
                   bt = upload(b, {cols});
      Tensor fused_x = upload(x, {rows, cols}), fused = poisoned({rows, cols});
      backend().add_layer_norm(fused_x, yt, layerscale ? &st : nullptr, wt, bt, eps, fused);
      Tensor separate_x = upload(x, {rows, cols}), separate = poisoned({rows, cols});
      if (layerscale)
        backend().add_scaled(separate_x, yt, st);
      else
        backend().add(separate_x, yt);
      backend().layer_norm(separate_x, wt, bt, eps, separate);
      const std::vector<float> got_x = download(fused_x), got = download(fused);
      EXPECT_EQ(got_x, download(separate_x)) << what << ": the residual differs from add / add_scaled";
      EXPECT_EQ(got, download(separate)) << what << ": the norm differs from layer_norm";

      std::vector<double> sum(x.size()), ref(x.size());
      for (int r = 0; r < rows; ++r) {
        double mean = 0, var = 0;
        for (int c = 0; c < cols; ++c) {
          const size_t i = size_t(r) * cols + c;
          sum[i] = double(x[i]) + (layerscale ? double(scale[c]) : 1.0) * y[i];
          mean += sum[i];
        }
        mean /= cols;
        for (int c = 0; c < cols; ++c) var += std::pow(sum[size_t(r) * cols + c] - mean, 2);
        var /= cols;
        for (int c = 0; c < cols; ++c)
          ref[size_t(r) * cols + c] = (sum[size_t(r) * cols + c] - mean) / std::sqrt(var + eps) * w[c] + b[c];
      }
      expect_close(what + " x", got_x, sum, kElementwiseTol);
      expect_close(what + " out", got, ref, kRowReductionTol);
    }
  Tensor x = poisoned({2, 8});
  EXPECT_THROW(backend().add_layer_norm(x, poisoned({2, 8}), nullptr, poisoned({8}), poisoned({8}), 1e-6f, x), Error);
  Tensor out = poisoned({2, 8}), short_scale = poisoned({7});
  EXPECT_THROW(backend().add_layer_norm(x, poisoned({2, 8}), &short_scale, poisoned({8}), poisoned({8}), 1e-6f, out),
               Error);
}

TEST_F(CudaOps, Bf16OutputsAreTheF32OutputsRounded) {
  const auto expect_rounded = [](const std::string& what, const std::vector<float>& f32,
                                 const std::vector<float>& bf16) {
    ASSERT_EQ(f32.size(), bf16.size());
    for (size_t i = 0; i < f32.size(); ++i)
      ASSERT_EQ(round_bf16(f32[i]), bf16[i]) << what << " element " << i << " (f32 " << f32[i] << ")";
  };
  const int rows = randint(1, 70), cols = randint(1, 5000);
  const float eps = 1e-5f;
  const std::vector<float> x = randn(size_t(rows) * cols, 2.0f), y = randn(size_t(rows) * cols),
                           w = randn(cols), gu = randn(size_t(rows) * 2 * cols, 3.0f);
  const std::string shape = cat(rows, "x", cols);
  Tensor f32 = poisoned({rows, cols}), bf16 = backend().empty({rows, cols}, DType::BF16);
  const std::vector<float> b = randn(cols);
  backend().layer_norm(upload(x, {rows, cols}), upload(w, {cols}), upload(b, {cols}), eps, f32);
  backend().layer_norm(upload(x, {rows, cols}), upload(w, {cols}), upload(b, {cols}), eps, bf16);
  expect_rounded("layer_norm " + shape, download(f32), download(bf16));

  backend().rms_norm(upload(x, {rows, cols}), upload(w, {cols}), eps, f32);
  backend().rms_norm(upload(x, {rows, cols}), upload(w, {cols}), eps, bf16);
  expect_rounded("rms_norm " + shape, download(f32), download(bf16));

  Tensor x1 = upload(x, {rows, cols}), x2 = upload(x, {rows, cols});
  backend().add_rms_norm(x1, upload(y, {rows, cols}), upload(w, {cols}), eps, f32);
  backend().add_rms_norm(x2, upload(y, {rows, cols}), upload(w, {cols}), eps, bf16);
  expect_rounded("add_rms_norm " + shape, download(f32), download(bf16));
  EXPECT_EQ(download(x1), download(x2)) << "add_rms_norm's residual must not depend on out's dtype";

  backend().swiglu(upload(gu, {rows, 2 * cols}), f32);
  backend().swiglu(upload(gu, {rows, 2 * cols}), bf16);
  expect_rounded("swiglu " + shape, download(f32), download(bf16));

  backend().gelu_erf(upload(x, {rows, cols}), f32);  // out of place
  backend().gelu_erf(upload(x, {rows, cols}), bf16);
  expect_rounded("gelu_erf " + shape, download(f32), download(bf16));
  Tensor in_place = upload(x, {rows, cols});
  backend().gelu_erf(in_place, in_place);
  EXPECT_EQ(download(in_place), download(f32)) << "gelu_erf " << shape << ": in place differs from out of place";

  Tensor bf16_in_place = backend().empty({rows, cols}, DType::BF16);
  EXPECT_THROW(backend().rms_norm(bf16_in_place, upload(w, {cols}), eps, bf16_in_place), Error);
  Tensor ints = backend().empty({rows, cols}, DType::I32);
  EXPECT_THROW(backend().swiglu(upload(gu, {rows, 2 * cols}), ints), Error);
}

TEST_F(CudaOps, GeluErf) {
  for (int n : {1, 257, 100003}) {
    const std::vector<float> x = uniform(n, -6.0f, 6.0f);
    Tensor t = upload(x, {n});
    backend().gelu_erf(t, t);
    std::vector<double> ref(n);
    for (int i = 0; i < n; ++i) ref[i] = 0.5 * x[i] * (1.0 + std::erf(x[i] / std::sqrt(2.0)));
    expect_close(cat("gelu_erf n=", n), download(t), ref, kElementwiseTol);
  }
}

TEST_F(CudaOps, SwigluOfPackedGateUp) {
  for (const auto& [rows, cols] : {std::pair{1, 14336}, {3, 14336}, {7, 33}}) {
    const std::vector<float> gu = randn(size_t(rows) * 2 * cols, 3.0f);
    std::vector<double> ref(size_t(rows) * cols);
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) {
        const double g = gu[size_t(r) * 2 * cols + c], u = gu[size_t(r) * 2 * cols + cols + c];
        ref[size_t(r) * cols + c] = g / (1.0 + std::exp(-g)) * u;
      }
    Tensor y = poisoned({rows, cols});
    backend().swiglu(upload(gu, {rows, 2 * cols}), y);
    expect_close(cat("swiglu ", rows, "x", cols), download(y), ref, kElementwiseTol);
  }
  Tensor y = poisoned({2, 8});
  EXPECT_THROW(backend().swiglu(poisoned({2, 15}), y), Error);
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

// Tokens of several sequences at distinct positions, blocks shuffled: q comes back rotated, the
// cache holds (read back from device memory) the rotated k and the v at each token's slot.
TEST_F(CudaOps, RopeKvWrite) {
  struct Case {
    int tokens, q_heads, kv_heads, head_dim;
    float theta;
  };
  for (const Case& c : {Case{5, 4, 2, 16, 10000.0f}, Case{3, 32, 8, 128, 10000.0f},
                        Case{2, 2, 1, 18, 1e6f}, Case{40, 4, 1, 64, 10000.0f},
                        // Enough tokens that blocks take more heads each (a prefill's launch).
                        Case{120, 32, 8, 128, 1e6f}}) {
    const int qw = c.q_heads * c.head_dim, kw = c.kv_heads * c.head_dim, width = qw + 2 * kw;
    KvCacheConfig cfg;
    cfg.layers = 2;
    cfg.kv_heads = c.kv_heads;
    cfg.head_dim = c.head_dim;
    cfg.block_size = 16;
    const int capacity = 128, max_blocks = capacity / cfg.block_size, seqs = 2;
    cfg.num_blocks = seqs * max_blocks;
    std::vector<int32_t> tables(size_t(seqs) * max_blocks);
    std::iota(tables.begin(), tables.end(), 0);
    std::shuffle(tables.begin(), tables.end(), rng_);
    // Token t: sequence t % 2 at a cache position distinct within it; RoPE at positions up to
    // 32k (the op takes them apart from the batch's).
    std::vector<int32_t> seq(c.tokens), pos(c.tokens), rotation(c.tokens);
    for (int t = 0; t < c.tokens; ++t) {
      seq[t] = t % 2;
      pos[t] = randint(0, capacity / c.tokens - 1) * c.tokens + t;
      rotation[t] = randint(0, 32767);
    }
    rotation[0] = 0;
    const std::vector<float> qkv = randn(size_t(c.tokens) * width);
    auto cache = backend().create_kv_cache(cfg);
    AttentionBatch batch;
    batch.token_seq = upload_i32(seq, {c.tokens});
    batch.token_pos = upload_i32(pos, {c.tokens});
    batch.block_tables = upload_i32(tables, {seqs, max_blocks});
    batch.max_context = capacity;
    const Tensor input = upload(qkv, {c.tokens, width});
    Tensor q = poisoned({c.tokens, qw});
    backend().rope_kv_write(input, upload_i32(rotation, {c.tokens}), c.theta, *cache, 1, batch, q);
    backend().synchronize();  // the cache is read below by plain cudaMemcpy, off the stream

    // transformers: inv_freq = 1 / theta ** (arange(0, D, 2) / D) and freqs = pos * inv_freq,
    // both in f32; out = x * cos + rotate_half(x) * sin.
    const int half = c.head_dim / 2;
    std::vector<double> q_ref(size_t(c.tokens) * qw), k_ref(size_t(c.tokens) * kw),
        v_ref(size_t(c.tokens) * kw);
    std::vector<float> k_got(k_ref.size()), v_got(v_ref.size());
    const cuda::PagedLayer layer = dynamic_cast<const cuda::CudaKvCache&>(*cache).layer(1);
    std::vector<uint16_t> bits(kw);
    for (int t = 0; t < c.tokens; ++t) {
      const float* row = qkv.data() + size_t(t) * width;
      auto rotate = [&](const float* x, double* out) {
        for (int i = 0; i < half; ++i) {
          const float exponent = float(2 * i) / float(c.head_dim);
          const float inv_freq =
              1.0f / static_cast<float>(std::pow(double(c.theta), double(exponent)));
          const double angle = static_cast<float>(float(rotation[t]) * inv_freq);
          out[i] = x[i] * std::cos(angle) - x[i + half] * std::sin(angle);
          out[i + half] = x[i + half] * std::cos(angle) + x[i] * std::sin(angle);
        }
      };
      for (int h = 0; h < c.q_heads; ++h)
        rotate(row + h * c.head_dim, q_ref.data() + size_t(t) * qw + h * c.head_dim);
      for (int h = 0; h < c.kv_heads; ++h)
        rotate(row + qw + h * c.head_dim, k_ref.data() + size_t(t) * kw + h * c.head_dim);
      for (int e = 0; e < kw; ++e) v_ref[size_t(t) * kw + e] = round_bf16(row[qw + kw + e]);
      const size_t slot = size_t(tables[size_t(seq[t]) * max_blocks + pos[t] / cfg.block_size]) *
                              cfg.block_size + pos[t] % cfg.block_size;
      for (const auto& [src, dst] : {std::pair{layer.k, k_got.data()}, {layer.v, v_got.data()}}) {
        ASSERT_EQ(cudaMemcpy(bits.data(), src + slot * kw, size_t(kw) * 2, cudaMemcpyDeviceToHost),
                  cudaSuccess);
        for (int e = 0; e < kw; ++e) dst[size_t(t) * kw + e] = bf16_to_f32(bits[e]);
      }
    }
    const std::string shape =
        cat("T=", c.tokens, " Hq=", c.q_heads, " Hkv=", c.kv_heads, " D=", c.head_dim);
    expect_close("rope_kv_write q " + shape, download(q), q_ref, kRowReductionTol);
    expect_close("rope_kv_write cached k (bf16) " + shape, k_got, k_ref, 1.0 / 256);
    expect_close("rope_kv_write cached v (bf16) " + shape, v_got, v_ref, 0.0);
    expect_close("rope_kv_write leaves qkv " + shape, download(input), as_double(qkv), 0.0);
  }
  KvCacheConfig cfg;
  cfg.layers = 1;
  cfg.kv_heads = 1;
  cfg.head_dim = 4;
  cfg.num_blocks = 1;
  auto cache = backend().create_kv_cache(cfg);
  AttentionBatch batch;
  batch.token_seq = upload_i32({0}, {1});
  batch.token_pos = upload_i32({0}, {1});
  batch.block_tables = upload_i32({0}, {1, 1});
  Tensor q = poisoned({1, 8});
  const Tensor narrow = poisoned({1, 12}), fits = poisoned({1, 16});
  EXPECT_THROW(backend().rope_kv_write(narrow, batch.token_pos, 1e4f, *cache, 0, batch, q), Error);
  EXPECT_THROW(backend().rope_kv_write(fits, batch.token_pos, 1e4f, *cache, 1, batch, q), Error);
}

}  // namespace
}  // namespace moxin::cuda_test
