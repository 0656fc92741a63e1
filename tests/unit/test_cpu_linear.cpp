// CPU linear, patch_embed and embedding against double-precision references, for weights in
// BF16, F16 and F32 on awkward shapes (both GEMV and GEMM regimes, every block edge).
#include "test_cpu_common.hpp"

namespace moxin::cpu_test {
namespace {

// y = x W^T + b in double from the exact stored weight values.
std::vector<double> reference_linear(const std::vector<float>& x, const std::vector<float>& w,
                                     const std::vector<float>* bias, int64_t M, int64_t N, int64_t K) {
  std::vector<double> y(static_cast<size_t>(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = bias ? (*bias)[n] : 0.0;
      for (int64_t k = 0; k < K; ++k) s += static_cast<double>(x[m * K + k]) * w[n * K + k];
      y[m * N + n] = s;
    }
  return y;
}

LinearWeight linear_weight(const OwnedTensor& w, const OwnedTensor* b, int64_t out, int64_t in) {
  LinearWeight lw;
  lw.weight = &w.info;
  lw.bias = b ? &b->info : nullptr;
  lw.out_features = out;
  lw.in_features = in;
  return lw;
}

struct Shape {
  int64_t M, N, K;
};

// Tolerance for f32 accumulation: ~sqrt(K) roundings of 2^-24 relative each.
constexpr double kF32Tolerance = 1e-5;

double norm(const std::vector<double>& v) {
  double s = 0;
  for (double e : v) s += e * e;
  return std::sqrt(s);
}

// kF32Tolerance relative to ||y||, where the sums do not cancel. An f32 sum of K + 1 terms errs
// by about sqrt(K + 1) roundings of the terms' typical size, ||sum |terms| || / sqrt(K + 1), which
// is ||y|| itself for terms of random signs; where the outputs cancel (a single output of
// x w + b can be near 0) the same absolute error is a larger share of ||y||.
double f32_sum_tolerance(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>* bias,
                         const std::vector<double>& ref, const Shape& s) {
  std::vector<float> x_abs = x, w_abs = w, b_abs = bias ? *bias : std::vector<float>{};
  for (float& v : x_abs) v = std::abs(v);
  for (float& v : w_abs) v = std::abs(v);
  for (float& v : b_abs) v = std::abs(v);
  const double abs_norm = norm(reference_linear(x_abs, w_abs, bias ? &b_abs : nullptr, s.M, s.N, s.K));
  const double typical = abs_norm / std::sqrt(static_cast<double>(s.K + 1));
  return kF32Tolerance * std::max(1.0, typical / std::max(norm(ref), 1e-300));
}

TEST(CpuLinear, MatchesReferenceOnAwkwardShapes) {
  Random rng(test_seed());
  const std::vector<Shape> shapes{
      {1, 1, 1},    {1, 3, 31},   {2, 33, 65},  {3, 65, 17},   {4, 31, 257},  {5, 7, 33},
      {8, 100, 64}, {9, 33, 300}, {31, 65, 3},  {33, 257, 31}, {65, 40, 513}, {257, 31, 65},
      {6, 300, 513},    // GEMV over two L2 row blocks
      {32, 70, 45},     // the largest GEMV of the AVX2 table (gemv_max_rows)
      {128, 33, 40},    // the largest GEMV of the others
      {129, 40, 70},    // the smallest GEMM
      {300, 290, 530},  // GEMM: several panels, K blocks and column blocks
      {1100, 40, 20},   // GEMM: more rows than two row blocks
  };
  for (DType dtype : weight_dtypes())
    for (const Shape& s : shapes)
      for (bool with_bias : {false, true}) {
        auto w = make_tensor("w", dtype, {s.N, s.K}, rng.uniform(static_cast<size_t>(s.N * s.K)));
        auto b = make_tensor("b", dtype, {s.N}, rng.uniform(static_cast<size_t>(s.N)));
        const std::vector<float> x = rng.uniform(static_cast<size_t>(s.M * s.K));
        const std::vector<float> bias_values = b->values;
        const auto ref = reference_linear(x, w->values, with_bias ? &bias_values : nullptr, s.M, s.N, s.K);
        expect_matches(cat("linear ", dtype_name(dtype), " M=", s.M, " N=", s.N, " K=", s.K, with_bias ? " +bias" : ""),
                       ref, f32_sum_tolerance(x, w->values, with_bias ? &bias_values : nullptr, ref, s),
                       [&](Backend& be) {
                         const Linear l = be.prepare_linear(linear_weight(*w, with_bias ? b.get() : nullptr, s.N, s.K));
                         Tensor xt = be.from_host_f32(x.data(), {s.M, s.K});
                         Tensor y = poisoned(be, {s.M, s.N});
                         be.linear(xt, l, y);
                         return host(be, y);
                       });
      }
}

// The bf16 tables' linear of bf16 weights at every row count: activations rounded to bf16,
// products summed in f32 (amx: on the tiles for the leading multiple of 32 output columns, the
// f32 GEMM taking the rest from the same rounded activations; avx512bf16: dot products over each
// whole row). Against a reference on the rounded activations the error is f32 accumulation;
// against the exact ones, bf16's.
TEST(CpuLinear, Bf16TablesMultiplyBf16RoundedActivationsAtEveryRowCount) {
  std::vector<const cpu::Kernels*> tables;
  for (const cpu::Kernels* k : cpu::supported_kernels())
    if (k->bf16_tile_matmul != nullptr) tables.push_back(k);
  if (tables.empty()) GTEST_SKIP() << "this CPU (or kernel) runs neither AMX bf16 tiles nor AVX-512 BF16";
  Random rng(test_seed());
  constexpr double kBf16ActivationTolerance = 4e-3;  // ~2^-9 / sqrt(3) per product, with room
  const std::vector<Shape> shapes{
      {1, 40, 45},                       // a decode row: on the tiles too
      {16, 64, 96},                      // the most rows of the one-xv-tile decode blocks
      {17, 32, 32},                      // the fewest of the two-tile ones
      {40, 96, 288},                     // a decode batch: each W block streams all its input blocks
      {200, 45, 96},                     // rows not a multiple of 32; 13 columns for the f32 GEMM
      {300, 300, 544},                   // input blocks of 256 and a part block; several column chunks
      {600, 64, 64},                     // two passes of activation rows
      {150, 64, 80},                     // 16 in-features past the tiles (SigLIP's fc2: 4304)
      {140, 40, 45},                     // an odd number of them
      {7, 13, 4099},                     // avx512bf16: partial register tiles both ways, a 3-input last step
      {9, 200, 4200},                    // avx512bf16: several weight blocks (768 KB of rows each)
  };
  for (const cpu::Kernels* table : tables)
  for (const Shape& s : shapes)
    for (bool with_bias : {false, true}) {
      const std::string what =
          cat(table->name, " linear M=", s.M, " N=", s.N, " K=", s.K, with_bias ? " +bias" : "");
      auto w = make_tensor("w", DType::BF16, {s.N, s.K}, rng.uniform(static_cast<size_t>(s.N * s.K)));
      auto b = make_tensor("b", DType::BF16, {s.N}, rng.uniform(static_cast<size_t>(s.N)));
      const std::vector<float> x = rng.uniform(static_cast<size_t>(s.M * s.K));
      std::vector<float> x_rounded = x;
      for (float& v : x_rounded) v = bf16_to_f32(f32_to_bf16(v));
      const std::vector<float>* bias = with_bias ? &b->values : nullptr;
      const auto ref_rounded = reference_linear(x_rounded, w->values, bias, s.M, s.N, s.K);
      const auto ref_exact = reference_linear(x, w->values, bias, s.M, s.N, s.K);
      std::vector<float> previous;
      for (int threads : {1, 2}) {
        cpu::CpuBackend backend(threads, *table);
        const Linear l = backend.prepare_linear(linear_weight(*w, with_bias ? b.get() : nullptr, s.N, s.K));
        Tensor y = poisoned(backend, {s.M, s.N});
        backend.linear(backend.from_host_f32(x.data(), {s.M, s.K}), l, y);
        const std::vector<float> got = host(backend, y);
        ASSERT_TRUE(all_finite(got)) << what << ": some output is not finite (unwritten?)";
        // Whichever kernel took a column (GEMV, tiles, the f32 GEMM's leftover columns), it
        // multiplied the rounded activations and summed in f32.
        EXPECT_LE(relative_error(got, ref_rounded), kF32Tolerance) << what << ", " << threads << " threads";
        EXPECT_LE(relative_error(got, ref_exact), kBf16ActivationTolerance) << what;
        EXPECT_GT(relative_error(got, ref_exact), relative_error(got, ref_rounded))
            << what << ": the output looks computed from unrounded activations";
        if (!previous.empty()) {
          EXPECT_TRUE(previous == got) << what << ": 1 and 2 threads differ";
        }
        previous = got;
      }
      // A row alone gives the very bits it gets among the others (the server's batch invariance).
      cpu::CpuBackend backend(2, *table);
      const Linear l = backend.prepare_linear(linear_weight(*w, with_bias ? b.get() : nullptr, s.N, s.K));
      for (int64_t m : {int64_t{0}, s.M - 1}) {
        Tensor y = poisoned(backend, {1, s.N});
        backend.linear(backend.from_host_f32(x.data() + m * s.K, {1, s.K}), l, y);
        const std::vector<float> alone = host(backend, y);
        EXPECT_TRUE(std::equal(alone.begin(), alone.end(), previous.begin() + m * s.N))
            << what << ": row " << m << " alone differs from the same row in the batch";
      }
    }
}

TEST(CpuLinear, RejectsMismatchedShapesAndQuantizedWeights) {
  Random rng(test_seed());
  auto backend = create_cpu_backend(1);
  auto w = make_tensor("layers.0.w", DType::BF16, {16, 128}, rng.uniform(16 * 128));
  const Linear l = backend->prepare_linear(linear_weight(*w, nullptr, 16, 128));
  Tensor x = backend->empty({3, 64}, DType::F32);
  Tensor y = backend->empty({3, 16}, DType::F32);
  expect_error([&] { backend->linear(x, l, y); }, "[cpu] linear: x is [3, 64] but the weight 'layers.0.w' expects 128 input features");
  Tensor x2 = backend->empty({3, 128}, DType::F32);
  Tensor y2 = backend->empty({2, 16}, DType::F32);
  expect_error([&] { backend->linear(x2, l, y2); }, "[cpu] linear: y is [2, 16]");
  expect_error([&] { backend->linear(x2, l, x2); }, "[cpu] linear: y is [3, 128]");
  LinearWeight q = linear_weight(*w, nullptr, 16, 128);
  q.bits = 4;
  q.group_size = 64;
  expect_error([&] { backend->prepare_linear(q); }, "U32 words of packed codes but is BF16");
  expect_error([&] { backend->prepare_linear(linear_weight(*w, nullptr, 16, 100)); }, "[cpu] prepare_linear");
  auto bad_bias = make_tensor("b", DType::F32, {15}, rng.uniform(15));
  expect_error([&] { backend->prepare_linear(linear_weight(*w, bad_bias.get(), 16, 128)); }, "bias 'b' is [15]");
  expect_error([&] { backend->linear(x2, Linear{}, y); }, "was not prepared");
}

TEST(CpuLinear, DerivesTheShapeOfA2DWeight) {
  Random rng(test_seed());
  auto backend = create_cpu_backend(1);
  auto w = make_tensor("w", DType::F32, {5, 7}, rng.uniform(35));
  LinearWeight lw;
  lw.weight = &w->info;
  const Linear l = backend->prepare_linear(lw);
  EXPECT_EQ(l.out_features, 5);
  EXPECT_EQ(l.in_features, 7);
}

TEST(CpuPatchEmbed, MatchesConvolutionReference) {
  Random rng(test_seed());
  struct Case {
    int64_t B, H, W, p, dim;
  };
  for (DType dtype : weight_dtypes())
    for (const Case& c : {Case{1, 4, 6, 2, 5}, Case{2, 9, 6, 3, 33}, Case{1, 28, 42, 14, 40}}) {
      const int64_t patch_len = 3 * c.p * c.p, gh = c.H / c.p, gw = c.W / c.p, P = c.B * gh * gw;
      auto w = make_tensor("proj.weight", dtype, {c.dim, 3, c.p, c.p}, rng.uniform(static_cast<size_t>(c.dim * patch_len)));
      auto b = make_tensor("proj.bias", dtype, {c.dim}, rng.uniform(static_cast<size_t>(c.dim)));
      const std::vector<float> img = rng.uniform(static_cast<size_t>(c.B * c.H * c.W * 3), -2.0f, 2.0f);
      // Conv2d(3, dim, p, stride p) on NCHW, written directly: weight [o, ch, kh, kw].
      std::vector<double> ref(static_cast<size_t>(P * c.dim));
      for (int64_t bi = 0; bi < c.B; ++bi)
        for (int64_t py = 0; py < gh; ++py)
          for (int64_t px = 0; px < gw; ++px)
            for (int64_t o = 0; o < c.dim; ++o) {
              double s = b->values[o];
              for (int64_t ch = 0; ch < 3; ++ch)
                for (int64_t kh = 0; kh < c.p; ++kh)
                  for (int64_t kw = 0; kw < c.p; ++kw)
                    s += static_cast<double>(w->values[((o * 3 + ch) * c.p + kh) * c.p + kw]) *
                         img[((bi * c.H + py * c.p + kh) * c.W + px * c.p + kw) * 3 + ch];
              ref[((bi * gh + py) * gw + px) * c.dim + o] = s;
            }
      expect_matches(cat("patch_embed ", dtype_name(dtype), " p=", c.p), ref, kF32Tolerance, [&](Backend& be) {
        const Linear l = be.prepare_linear(linear_weight(*w, b.get(), c.dim, patch_len));
        Tensor images = be.from_host_f32(img.data(), {c.B, c.H, c.W, 3});
        Tensor y = poisoned(be, {P, c.dim});
        be.patch_embed(images, l, static_cast<int>(c.p), y);
        return host(be, y);
      });
    }
}

TEST(CpuPatchEmbed, RejectsBadShapes) {
  Random rng(test_seed());
  auto backend = create_cpu_backend(1);
  auto w = make_tensor("proj.weight", DType::F32, {4, 3, 2, 2}, rng.uniform(48));
  LinearWeight lw;
  lw.weight = &w->info;
  lw.out_features = 4;
  lw.in_features = 12;
  const Linear l = backend->prepare_linear(lw);
  Tensor odd = backend->empty({1, 5, 4, 3}, DType::F32);
  Tensor y = backend->empty({4, 4}, DType::F32);
  expect_error([&] { backend->patch_embed(odd, l, 2, y); }, "not a multiple of the patch size 2");
  Tensor images6 = backend->empty({1, 6, 6, 3}, DType::F32);
  expect_error([&] { backend->patch_embed(images6, l, 3, y); }, "3x3 RGB patch has 27");
  Tensor images = backend->empty({1, 4, 4, 3}, DType::F32);
  Tensor wrong_y = backend->empty({3, 4}, DType::F32);
  expect_error([&] { backend->patch_embed(images, l, 2, wrong_y); }, "[cpu] patch_embed: y is [3, 4]");
}

TEST(CpuEmbedding, CopiesRowsExactly) {
  Random rng(test_seed());
  for (DType dtype : weight_dtypes()) {
    const int64_t vocab = 37, dim = 33;
    auto table = make_tensor("embed_tokens", dtype, {vocab, dim}, rng.uniform(static_cast<size_t>(vocab * dim), -3, 3));
    std::vector<int32_t> ids{0, 36, 5, 5, 17};
    std::vector<double> ref;
    for (int32_t id : ids)
      for (int64_t i = 0; i < dim; ++i) ref.push_back(table->values[id * dim + i]);
    expect_matches(cat("embedding ", dtype_name(dtype)), ref, 0.0, [&](Backend& be) {
      const Linear l = be.prepare_linear(linear_weight(*table, nullptr, vocab, dim));
      Tensor idt = be.from_host_i32(ids.data(), {static_cast<int64_t>(ids.size())});
      Tensor y = poisoned(be, {static_cast<int64_t>(ids.size()), dim});
      be.embedding(idt, l, y, {});
      return host(be, y);
    });
  }
  auto backend = create_cpu_backend(1);
  auto table = make_tensor("embed_tokens", DType::BF16, {4, 8}, rng.uniform(32));
  const Linear l = backend->prepare_linear(linear_weight(*table, nullptr, 4, 8));
  const int32_t bad[2] = {1, 4};
  Tensor idt = backend->from_host_i32(bad, {2});
  Tensor y = backend->empty({2, 8}, DType::F32);
  expect_error([&] { backend->embedding(idt, l, y, {}); }, "id 4 (position 1) is outside the table 'embed_tokens' of 4 rows");
}

// Rows whose token a sampler drew (DrawnTokens: the scheduler's step issued before the host reads
// the last one's tokens) take drawn[sources[t]]; the others ids[t].
TEST(CpuEmbedding, RowsWithASourceTakeTheDrawnToken) {
  Random rng(test_seed());
  const int64_t vocab = 29, dim = 12;
  auto table = make_tensor("embed_tokens", DType::BF16, {vocab, dim}, rng.uniform(static_cast<size_t>(vocab * dim), -3, 3));
  std::vector<int32_t> drawn(6), ids(5);
  for (int32_t& id : drawn) id = static_cast<int32_t>(rng.integer(0, vocab - 1));
  for (int32_t& id : ids) id = static_cast<int32_t>(rng.integer(0, vocab - 1));
  const std::vector<int32_t> sources{4, -1, 0, 4, -1};
  std::vector<double> ref;
  for (size_t t = 0; t < ids.size(); ++t) {
    const int32_t id = sources[t] >= 0 ? drawn[static_cast<size_t>(sources[t])] : ids[t];
    for (int64_t i = 0; i < dim; ++i) ref.push_back(table->values[id * dim + i]);
  }
  auto backend = create_cpu_backend(1);
  const Linear l = backend->prepare_linear(linear_weight(*table, nullptr, vocab, dim));
  Tensor idt = backend->from_host_i32(ids.data(), {5});
  Tensor st = backend->from_host_i32(sources.data(), {5});
  Tensor dt = backend->from_host_i32(drawn.data(), {6, 1});
  Tensor y = poisoned(*backend, {5, dim});
  backend->embedding(idt, l, y, {&st, &dt});
  const std::vector<float> got = host(*backend, y);
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_EQ(got[i], ref[i]) << "element " << i;

  const std::vector<int32_t> past_end{6, -1, -1, -1, -1};
  Tensor bad = backend->from_host_i32(past_end.data(), {5});
  expect_error([&] { backend->embedding(idt, l, y, {&bad, &dt}); }, "row 0 takes drawn token 6 of 6");
}

}  // namespace
}  // namespace moxin::cpu_test
