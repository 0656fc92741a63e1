// CPU row-wise and element-wise ops: refusals of bad shapes, per-element accuracy of the
// activations over their whole range, exact copies, parameters. Their accuracy on awkward
// shapes against double-precision references is the op-case table's (test_op_cases.cpp).
#include "test_cpu_common.hpp"

namespace moxin::cpu_test {
namespace {

TEST(CpuNorms, AddRmsNormRejectsBadShapesAndOverlaps) {
  auto backend = create_cpu_backend(1);
  Tensor x = backend->empty({2, 8}, DType::F32), y = backend->empty({2, 8}, DType::F32);
  Tensor w = backend->empty({8}, DType::F32), narrow = backend->empty({2, 7}, DType::F32);
  expect_error([&] { backend->add_rms_norm(x, narrow, w, 1e-5f, y); }, "[cpu] add_rms_norm: x is [2, 8] but y is [2, 7]");
  expect_error([&] { backend->add_rms_norm(x, y, w, 1e-5f, narrow); }, "[cpu] add_rms_norm: x is [2, 8] but out is [2, 7]");
  expect_error([&] { backend->add_rms_norm(x, y, narrow, 1e-5f, y); }, "[cpu] add_rms_norm: weight is [2, 7]");
  expect_error([&] { backend->add_rms_norm(x, y, w, 1e-5f, x); }, "[cpu] add_rms_norm: out must not overlap x or y");
  expect_error([&] { backend->add_rms_norm(x, y, w, 1e-5f, y); }, "[cpu] add_rms_norm: out must not overlap x or y");
}

TEST(CpuNorms, RejectMismatchedWeights) {
  auto backend = create_cpu_backend(1);
  Tensor x = backend->empty({2, 8}, DType::F32), y = backend->empty({2, 8}, DType::F32);
  Tensor w = backend->empty({7}, DType::F32);
  expect_error([&] { backend->rms_norm(x, w, 1e-5f, y); }, "[cpu] rms_norm: weight is [7] but the input has 8 columns");
  expect_error([&] { backend->layer_norm(x, w, w, 1e-6f, y); }, "[cpu] layer_norm: weight is [7]");
  Tensor y3 = backend->empty({3, 8}, DType::F32);
  expect_error([&] { backend->rms_norm(x, x, 1e-5f, y3); }, "[cpu] rms_norm: x is [2, 8] but y is [3, 8]");
  Tensor i = backend->empty({2, 8}, DType::I32);
  expect_error([&] { backend->rms_norm(i, w, 1e-5f, y); }, "x must be F32, got I32");
}

// Element by element over the whole range, including where 1 + erf(x / sqrt 2) is tiny.
TEST(CpuActivations, GeluErfAndSiluAreAccuratePerElement) {
  const int64_t n = 240001;
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) x[static_cast<size_t>(i)] = -12.0f + 24.0f * static_cast<float>(i) / static_cast<float>(n - 1);
  x.insert(x.end(), {0.0f, -0.0f, 1e-30f, -1e-30f, 1e10f, -1e10f, 88.0f, -88.0f, -13.5f});
  const int64_t count = static_cast<int64_t>(x.size());
  std::vector<float> gate_up = x;  // one row: gate = x, up = 1, so swiglu gives silu(x)
  gate_up.insert(gate_up.end(), x.size(), 1.0f);
  for (BackendCase& c : backend_cases()) {
    Tensor t = c.backend->from_host_f32(x.data(), {count});
    Tensor s = poisoned(*c.backend, {1, count});
    c.backend->swiglu(c.backend->from_host_f32(gate_up.data(), {1, 2 * count}), s);
    c.backend->gelu_erf(t, t);
    const std::vector<float> gelu = host(*c.backend, t), silu = host(*c.backend, s);
    double worst_gelu = 0, worst_silu = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double v = x[i];
      const double g = 0.5 * v * std::erfc(-v / std::sqrt(2.0)), si = v / (1.0 + std::exp(-v));
      if (std::abs(g) > 1e-30) worst_gelu = std::max(worst_gelu, std::abs(gelu[i] - g) / std::abs(g));
      if (std::abs(si) > 1e-30) worst_silu = std::max(worst_silu, std::abs(silu[i] - si) / std::abs(si));
      if (std::abs(g) <= 1e-30) {
        EXPECT_LE(std::abs(gelu[i]), 1e-29) << c.label << " gelu(" << v << ")";
      }
    }
    // A few f32 roundings each: well inside the 1e-6 the ops are held to elsewhere.
    EXPECT_LT(worst_gelu, 1e-6) << c.label;
    EXPECT_LT(worst_silu, 1e-6) << c.label;
    std::cout << c.label << ": worst relative error gelu " << worst_gelu << ", silu " << worst_silu << std::endl;
  }
}

TEST(CpuActivations, SwigluRejectsBadShapesAndOverlaps) {
  auto backend = create_cpu_backend(1);
  Tensor gu = backend->empty({2, 16}, DType::F32), y = backend->empty({2, 9}, DType::F32);
  expect_error([&] { backend->swiglu(gu, y); },
               "[cpu] swiglu: gate_up is [2, 16] but y is [2, 9] (gate_up needs [rows, 2 * y columns])");
  Tensor inside = gu;
  inside.shape = {2, 8};
  expect_error([&] { backend->swiglu(gu, inside); }, "[cpu] swiglu: y must not overlap gate_up");
}

TEST(CpuResidual, RejectsBadShapes) {
  auto backend = create_cpu_backend(1);
  Tensor a = backend->empty({2, 8}, DType::F32), b = backend->empty({2, 7}, DType::F32);
  expect_error([&] { backend->add(a, b); }, "[cpu] add: x is [2, 8] but y is [2, 7]");
  expect_error([&] { backend->add_rows_cyclic(a, b); }, "[cpu] add_rows_cyclic: table is [2, 7]");
  expect_error([&] { backend->add_scaled(a, a, b); }, "[cpu] add_scaled: scale is [2, 7] but the input has 8 columns");
}

TEST(CpuCopies, CopyRowsColsAndGatherAreExact) {
  Random rng(test_seed());
  const int64_t R = 9, C = 33;
  const std::vector<float> src = rng.uniform(static_cast<size_t>(R * C)), dst0 = rng.uniform(static_cast<size_t>(20 * 50));
  // copy_rows: rows 4..12 of a [20, 33] destination.
  {
    std::vector<double> ref(dst0.begin(), dst0.begin() + 20 * C);
    for (int64_t i = 0; i < R * C; ++i) ref[static_cast<size_t>(4 * C + i)] = src[static_cast<size_t>(i)];
    expect_matches("copy_rows", ref, 0.0, [&](Backend& be) {
      Tensor s = be.from_host_f32(src.data(), {R, C});
      Tensor d = be.from_host_f32(dst0.data(), {20, C});
      be.copy_rows(s, d, 4);
      return host(be, d);
    });
  }
  // copy_cols: columns 17..49 of a [9, 50] destination.
  {
    std::vector<double> ref(dst0.begin(), dst0.begin() + R * 50);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) ref[static_cast<size_t>(r * 50 + 17 + c)] = src[static_cast<size_t>(r * C + c)];
    expect_matches("copy_cols", ref, 0.0, [&](Backend& be) {
      Tensor s = be.from_host_f32(src.data(), {R, C});
      Tensor d = be.from_host_f32(dst0.data(), {R, 50});
      be.copy_cols(s, d, 17);
      return host(be, d);
    });
  }
  // gather_rows with repeats.
  {
    const std::vector<int32_t> rows{8, 0, 3, 3, 7};
    std::vector<double> ref;
    for (int32_t r : rows)
      for (int64_t c = 0; c < C; ++c) ref.push_back(src[static_cast<size_t>(r * C + c)]);
    expect_matches("gather_rows", ref, 0.0, [&](Backend& be) {
      Tensor s = be.from_host_f32(src.data(), {R, C});
      Tensor idx = be.from_host_i32(rows.data(), {5});
      Tensor y = poisoned(be, {5, C});
      be.gather_rows(s, idx, y);
      return host(be, y);
    });
  }
  auto backend = create_cpu_backend(1);
  Tensor s = backend->empty({R, C}, DType::F32), d = backend->empty({10, C}, DType::F32);
  expect_error([&] { backend->copy_rows(s, d, 2); }, "[cpu] copy_rows: cannot place src [9, 33] at row 2 of dst [10, 33]");
  expect_error([&] { backend->copy_cols(s, d, 0); }, "[cpu] copy_cols: cannot place src [9, 33]");
  const int32_t bad[1] = {9};
  Tensor idx = backend->from_host_i32(bad, {1});
  Tensor y = backend->empty({1, C}, DType::F32);
  expect_error([&] { backend->gather_rows(s, idx, y); }, "[cpu] gather_rows: row index 9 (entry 0) is outside x [9, 33]");
}

TEST(CpuMemory, ParamConvertsAndHostRoundTrips) {
  Random rng(test_seed());
  auto backend = create_cpu_backend(1);
  for (DType dtype : weight_dtypes()) {
    auto t = make_tensor("pos_embed", dtype, {1, 3, 5}, rng.uniform(15));
    Tensor p = backend->param(t->info);
    EXPECT_EQ(p.dtype, DType::F32);
    EXPECT_EQ(p.shape, (std::vector<int64_t>{1, 3, 5}));
    EXPECT_EQ(host(*backend, p), t->values) << dtype_name(dtype);
  }
  const std::vector<int32_t> ints{-3, 0, 7};
  Tensor i = backend->from_host_i32(ints.data(), {3});
  EXPECT_EQ(host(*backend, i), (std::vector<float>{-3, 0, 7}));
  auto bad = make_tensor("x", DType::F32, {4}, rng.uniform(4));
  bad->info.nbytes = 12;
  expect_error([&] { backend->param(bad->info); }, "[cpu] parameter 'x': 12 bytes do not match its shape and dtype");
}

}  // namespace
}  // namespace moxin::cpu_test
