// linear (tensor-core skinny GEMM for <= 64 rows, CUDA-core GEMV where it cannot run or when
// forced, cuBLASLt bf16 GEMM above; fused parts), patch_embed and embedding against f64
// references.
//
// Tolerances (||got - ref|| / ||ref||):
//  - GEMV (M <= 8, K not a multiple of 8 or CudaLinearPath::Gemv): f32 activations x bf16
//    weights, f32 sums: the reference uses the same bf16 weight values and exact activations,
//    so only f32 rounding remains: 1e-5.
//  - Skinny GEMM, cuBLASLt GEMM and patch_embed: activations are rounded to bf16 on the way into
//    the tensor cores. Against a reference that rounds them the same way the error is f32
//    rounding (1e-5); against the exact activations it is the bf16 rounding, ~2^-9 / sqrt(3) =
//    1.1e-3 per product: 4e-3 bounds it.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <tuple>

#include "backend/cuda/cuda_backend.hpp"
#include "backend/cuda/kernels.hpp"
#include "core/bf16.hpp"
#include "core/check.hpp"
#include "cuda_test_support.hpp"

namespace moxin::cuda_test {
namespace {

constexpr double kF32Tol = 1e-5;
constexpr double kBf16ActivationTol = 4e-3;

std::vector<double> linear_ref(const std::vector<float>& x, int64_t m, int64_t k,
                               const std::vector<float>& w, int64_t n,
                               const std::vector<float>* bias, bool round_x) {
  std::vector<double> y(static_cast<size_t>(m * n));
  for (int64_t r = 0; r < m; ++r)
    for (int64_t o = 0; o < n; ++o) {
      double acc = bias ? (*bias)[o] : 0.0;
      for (int64_t i = 0; i < k; ++i) {
        const float xv = x[r * k + i];
        acc += double(round_x ? round_bf16(xv) : xv) * w[o * k + i];
      }
      y[r * n + o] = acc;
    }
  return y;
}

// The bf16 step at v's magnitude.
double bf16_step(double v) {
  const uint16_t bits = static_cast<uint16_t>(f32_to_bf16(static_cast<float>(std::abs(v))) & 0x7fff);
  return static_cast<double>(bf16_to_f32(static_cast<uint16_t>(bits + 1))) - bf16_to_f32(bits);
}

// Whether the kernel that runs this linear rounds the activations to bf16 (the GEMV does not).
bool rounds_activations(int64_t m, int64_t k, CudaLinearPath path) {
  if (path == CudaLinearPath::Lt) return true;
  if (path == CudaLinearPath::Skinny && k % 8 == 0 && m <= cuda::kSkinnyMaxRows) return true;
  if (m > cuda::kGemvMaxRows) return true;
  // Buffers are 256-byte aligned: the GEMV runs at one row, K not a multiple of 8, or forced.
  return !(m == 1 || k % 8 != 0 || path == CudaLinearPath::Gemv);
}

class CudaLinear : public CudaOpsTest {
 protected:
  void TearDown() override {  // also runs for a test skipped for want of a GPU (no backend)
    if (backend_ != nullptr) set_cuda_linear_path(*backend_, CudaLinearPath::Auto);
  }

  void check_linear(int64_t m, int64_t n, int64_t k, bool with_bias, DType stored,
                    CudaLinearPath path = CudaLinearPath::Auto) {
    set_cuda_linear_path(backend(), path);
    const std::string shape = cat("M=", m, " N=", n, " K=", k, with_bias ? " +bias" : "", " ",
                                  dtype_name(stored), path == CudaLinearPath::Gemv ? " gemv" : "",
                                  path == CudaLinearPath::Skinny ? " skinny" : "",
                                  path == CudaLinearPath::Lt ? " cublasLt" : "");
    HostTensor w = host_tensor("w", {n, k}, stored, true, 0.05f);
    HostTensor b = host_tensor("b", {n}, DType::F32, false, 0.5f);
    const Linear prepared = prepare(w, with_bias ? &b : nullptr);
    const std::vector<float> x = randn(static_cast<size_t>(m * k));
    const std::vector<float> got = linear_both_ways(x, m, k, prepared, shape);
    const std::vector<float>* bias = with_bias ? &b.values : nullptr;
    if (!rounds_activations(m, k, path)) {
      expect_close("linear gemv " + shape, got, linear_ref(x, m, k, w.values, n, bias, false),
                   kF32Tol);
    } else {
      expect_close("linear gemm vs bf16-rounded x " + shape, got,
                   linear_ref(x, m, k, w.values, n, bias, true), kF32Tol);
      expect_close("linear gemm vs exact x " + shape, got,
                   linear_ref(x, m, k, w.values, n, bias, false), kBf16ActivationTol);
    }
  }
};

TEST_F(CudaLinear, GemvRowsUpToEight) {
  for (const CudaLinearPath path : {CudaLinearPath::Gemv, CudaLinearPath::Auto}) {
    check_linear(1, 1, 8, false, DType::BF16, path);
    check_linear(1, 33, 64, true, DType::BF16, path);
    check_linear(3, 65, 200, false, DType::BF16, path);
    check_linear(8, 257, 1024, true, DType::BF16, path);
    check_linear(5, 31, 4104, false, DType::BF16, path);
    check_linear(1, 1000, 4096, false, DType::BF16, path);
    check_linear(randint(1, 8), randint(1, 300), 8 * randint(1, 300), randint(0, 1), DType::BF16,
                 path);
  }
}

// The skinny tensor-core GEMM at every token tiling (8, 16, 32, 64 rows), one or two row tiles
// per block, K tails inside a 64-input chunk (K % 64 in 8..56) and N not a multiple of 16.
TEST_F(CudaLinear, SkinnyRowsUpToSixtyFour) {
  for (const CudaLinearPath path : {CudaLinearPath::Skinny, CudaLinearPath::Auto}) {
    check_linear(1, 16, 64, false, DType::BF16, path);
    check_linear(2, 17, 72, true, DType::BF16, path);
    check_linear(9, 33, 136, false, DType::BF16, path);
    check_linear(16, 100, 1000, true, DType::BF16, path);
    check_linear(17, 31, 520, false, DType::BF16, path);
    check_linear(32, 257, 4096, true, DType::BF16, path);
    check_linear(33, 47, 584, false, DType::BF16, path);
    check_linear(64, 300, 1096, true, DType::BF16, path);
    check_linear(randint(1, 64), randint(1, 600), 8 * randint(1, 700), randint(0, 1), DType::BF16,
                 path);
  }
}

// Each row's result does not depend on the other rows of the call: N identical rows through
// the skinny GEMM give N identical results, equal to its one-row result, bit for bit.
TEST_F(CudaLinear, SkinnyRowsAreBatchInvariant) {
  set_cuda_linear_path(backend(), CudaLinearPath::Skinny);
  const int64_t n = randint(1, 500), k = 8 * randint(1, 600);
  const Linear prepared = prepare(host_tensor("w", {n, k}, DType::BF16, true, 0.05f));
  const std::vector<float> row = randn(static_cast<size_t>(k));
  Tensor single = poisoned({1, n});
  backend().linear(upload(row, {1, k}), prepared, single);
  const std::vector<float> expected = download(single);
  for (const int64_t m : {2, 8, 9, 16, 17, 32, 33, 64}) {
    std::vector<float> x;
    for (int64_t r = 0; r < m; ++r) x.insert(x.end(), row.begin(), row.end());
    Tensor y = poisoned({m, n});
    backend().linear(upload(x, {m, k}), prepared, y);
    const std::vector<float> got = download(y);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t o = 0; o < n; ++o)
        ASSERT_EQ(got[static_cast<size_t>(r * n + o)], expected[static_cast<size_t>(o)])
            << "M=" << m << " row " << r << " output " << o << " (N=" << n << " K=" << k << ")";
  }
}

// linear_swiglu = swiglu(linear(x, gate | up)): fused into the GEMV where the linear alone would
// run the GEMV (1..8 rows), else the two ops. Every path must give the two ops' bits, and both
// must match the f64 reference (the GEMV's f32 sums: 1e-5; activations rounded to bf16 where a
// GEMM multiplies them: against the rounded reference).
TEST_F(CudaLinear, LinearSwigluIsTheLinearThenSwiglu) {
  for (const CudaLinearPath path : {CudaLinearPath::Auto, CudaLinearPath::Gemv}) {
    set_cuda_linear_path(backend(), path);
    for (const auto& [m, half, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 8}, {1, 37, 64}, {2, 100, 200},
                                     {3, 33, 72}, {5, 64, 8200}, {8, 9, 128}, {9, 40, 64}, {1, 20, 100},
                                     {int64_t{randint(1, 8)}, int64_t{randint(1, 300)}, 8 * int64_t{randint(1, 300)}}}) {
      for (const bool with_bias : {false, true}) {
        const std::string what = cat("M=", m, " I=", half, " K=", k, with_bias ? " +bias" : "",
                                     path == CudaLinearPath::Gemv ? " gemv" : "");
        HostTensor w = host_tensor("w", {2 * half, k}, DType::BF16, true, 0.05f);
        HostTensor b = host_tensor("b", {2 * half}, DType::F32, false, 0.5f);
        const Linear prepared = prepare(w, with_bias ? &b : nullptr);
        const std::vector<float> x = randn(static_cast<size_t>(m * k));
        const Tensor xt = upload(x, {m, k});
        Tensor gate_up = poisoned({m, 2 * half}), fused = poisoned({m, half});
        backend().linear_swiglu(xt, prepared, gate_up, fused);
        Tensor separate_gu = poisoned({m, 2 * half}), separate = poisoned({m, half});
        backend().linear(xt, prepared, separate_gu);
        backend().swiglu(separate_gu, separate);
        const std::vector<float> got = download(fused);
        EXPECT_EQ(got, download(separate)) << what << ": fused bits differ from linear + swiglu";
        const bool rounded = rounds_activations(m, k, path);
        const std::vector<double> gu = linear_ref(x, m, k, w.values, 2 * half, with_bias ? &b.values : nullptr, rounded);
        expect_close("linear_swiglu " + what, got, swiglu_ref(gu, m, half), kF32Tol);
      }
    }
  }
}

// At GEMM row counts with bf16 activations (the decoder's prefill), gate | up leave cuBLASLt as
// bf16: y = swiglu(bf16(x W^T)), against the f64 reference on the rounded x, element by element.
// The f32 error of a sum is bounded by the sum of its products' magnitudes, not by its value: a
// sum that cancels to near zero (seeds gave gate 4.9e-5 and up 1.3e-5 from 256 products of
// ~0.05) may be off by several bf16 steps of itself. So:
// - where the bound is under a quarter of a bf16 step of gate and of up, the output must be the
//   f64 swiglu of gate and up rounded to bf16 (or, for a value within the bound of a midpoint,
//   rounded the other way: at most 1% of the elements), which an unrounded gate | up would miss
//   by ~1e-3;
// - elsewhere (cancelling sums, ~10% of the elements here) the output must be within what the
//   sums' errors and the rounding can move it.
TEST_F(CudaLinear, LinearSwigluFromBf16ActivationsRoundsGateUp) {
  constexpr double kElementTol = 1e-5;   // relative, f32 rounding of the swiglu
  constexpr double kMidpointBand = 1e-4;  // relative distance of an f32 sum's error from a midpoint
  constexpr double kF32Epsilon = 0x1p-24;
  for (const auto& [m, half, k] :
       {std::tuple<int64_t, int64_t, int64_t>{64, 296, 256},
        {int64_t{randint(20, 200)}, 8 * int64_t{randint(1, 40)}, 8 * int64_t{randint(1, 100)}},
        {33, 37, 64}}) {
    const std::string what = cat("M=", m, " I=", half, " K=", k);
    HostTensor w = host_tensor("w", {2 * half, k}, DType::BF16, true, 0.05f);
    const Linear prepared = prepare(w);
    ASSERT_EQ(backend().linear_input_dtype(prepared, m), DType::BF16) << what;
    const std::vector<float> x = randn(static_cast<size_t>(m * k));
    Tensor gate_up = poisoned({m, 2 * half}), y = poisoned({m, half});
    backend().linear_swiglu(upload_bf16(x, {m, k}), prepared, gate_up, y);
    const std::vector<float> got = download(y);
    const std::vector<double> gu = linear_ref(x, m, k, w.values, 2 * half, nullptr, true);
    std::vector<float> x_abs = x, w_abs = w.values;
    for (float& v : x_abs) v = std::abs(v);
    for (float& v : w_abs) v = std::abs(v);
    const std::vector<double> gu_abs = linear_ref(x_abs, m, k, w_abs, 2 * half, nullptr, true);
    // An f32 sum of k products errs by about sqrt(k) roundings of its products' magnitudes (the
    // seeds above: 0.4 eps x abs_sum); 4 sqrt(k) of them is the band, with room to spare.
    const auto sum_error = [&](int64_t at) {
      return kMidpointBand * std::abs(gu[at]) + 4.0 * std::sqrt(static_cast<double>(k)) * kF32Epsilon * gu_abs[at];
    };
    // The bf16 values v (an f32 sum within `error` of it) may round to: nearest, and its other
    // neighbour where v is within the error of a midpoint.
    const auto roundings = [&](double v, double error) {
      const float f = static_cast<float>(v);
      const uint16_t bits = f32_to_bf16(f);
      const float nearest = bf16_to_f32(bits);
      // The neighbour on f's side: one step up or down in magnitude (sign and magnitude bits).
      const float other = bf16_to_f32(static_cast<uint16_t>(std::abs(f) > std::abs(nearest) ? bits + 1 : bits - 1));
      const bool near_midpoint = std::abs(std::abs(f - nearest) - std::abs(other - nearest) / 2) <= error;
      return near_midpoint ? std::vector<double>{nearest, other} : std::vector<double>{nearest};
    };
    size_t other_way = 0, cancelling = 0;
    for (int64_t r = 0; r < m; ++r)
      for (int64_t j = 0; j < half; ++j) {
        const int64_t gate_at = r * 2 * half + j, up_at = gate_at + half;
        const double gv = gu[gate_at], uv = gu[up_at], eg = sum_error(gate_at), eu = sum_error(up_at);
        const double out = got[static_cast<size_t>(r * half + j)];
        const std::string where = cat(what, ": output (", r, ", ", j, ") = ", out, " for gate ", gv, " and up ", uv);
        if (eg > bf16_step(gv) / 4 || eu > bf16_step(uv) / 4) {
          ++cancelling;
          const double sigmoid = 1.0 / (1.0 + std::exp(-gv)), silu = gv * sigmoid;
          const double d_gate = std::abs(uv) * std::abs(sigmoid + silu * (1.0 - sigmoid));  // |d out / d gate|
          const double bound = d_gate * (eg + bf16_step(gv)) + std::abs(silu) * (eu + bf16_step(uv)) +
                               (d_gate * (eg + bf16_step(gv))) * (eu + bf16_step(uv)) + kElementTol * std::abs(out);
          ASSERT_LE(std::abs(out - silu * uv), bound) << where << ": beyond the sums' error bound";
          continue;
        }
        bool matched = false, nearest_matched = false;
        for (const double g : roundings(gv, eg))
          for (const double u : roundings(uv, eu)) {
            const double ref = g / (1.0 + std::exp(-g)) * u;
            const bool close = std::abs(out - ref) <= kElementTol * std::max(std::abs(ref), 1e-6);
            matched = matched || close;
            nearest_matched = nearest_matched || (close && g == round_bf16(static_cast<float>(gv)) &&
                                                  u == round_bf16(static_cast<float>(uv)));
          }
        ASSERT_TRUE(matched) << where << ": matches no bf16 rounding of gate and up";
        other_way += nearest_matched ? 0 : 1;
      }
    EXPECT_LE(other_way, static_cast<size_t>(m * half) / 100) << what << ": too many values rounded the other way";
    EXPECT_LE(cancelling, static_cast<size_t>(m * half) / 4) << what << ": the rounding check covered too few outputs";
    std::printf("RESULT linear_swiglu from bf16 x %s: %zu of %lld outputs with gate or up rounded the other way, "
                "%zu with cancelling sums\n",
                what.c_str(), other_way, static_cast<long long>(m * half), cancelling);
  }
}

// A bf16 y (vit_attention's qkv where the attention takes bf16): the f32 sum plus the f32 bias,
// rounded to nearest once. Where cuBLASLt offers no such algorithm for the shape the backend must
// say so (vit_attention_input_dtype f32) and refuse a bf16 y by name.
TEST_F(CudaLinear, Bf16OutputAddsTheBiasThenRoundsOnce) {
  constexpr double kF32Epsilon = 0x1p-24;
  for (const auto& [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{261, 3 * 64, 128},
                                {int64_t{randint(65, 400)}, 8 * int64_t{randint(1, 64)}, 8 * int64_t{randint(1, 128)}}}) {
    const std::string what = cat("M=", m, " N=", n, " K=", k);
    HostTensor w = host_tensor("w", {n, k}, DType::BF16, true, 0.05f);
    const std::vector<float> x = randn(static_cast<size_t>(m * k));
    Tensor y = backend().empty({m, n}, DType::BF16);
    // A bias stored as f32 is not written into a bf16-output GEMM (its epilogue reads bf16).
    HostTensor b_f32 = host_tensor("b", {n}, DType::F32, false, 0.5f);
    const Linear f32_bias = prepare(w, &b_f32);
    EXPECT_EQ(backend().vit_attention_input_dtype(f32_bias, m), DType::F32) << what;
    EXPECT_THROW(backend().linear(upload_bf16(x, {m, k}), f32_bias, y), Error) << what;
    // A bf16 bias, as checkpoints store it: added exactly.
    HostTensor b = host_tensor("b", {n}, DType::BF16, false, 0.5f);
    const Linear prepared = prepare(w, &b);
    ASSERT_EQ(backend().linear_input_dtype(prepared, m), DType::BF16) << what;
    if (backend().vit_attention_input_dtype(prepared, m) != DType::BF16) {
      EXPECT_THROW(backend().linear(upload_bf16(x, {m, k}), prepared, y), Error) << what;
      std::printf("RESULT linear bf16 output %s: cuBLASLt offers no bf16-output algorithm with a bf16 bias\n",
                  what.c_str());
      continue;
    }
    backend().linear(upload_bf16(x, {m, k}), prepared, y);
    const std::vector<float> got = download(y);
    const std::vector<double> ref = linear_ref(x, m, k, w.values, n, &b.values, true);
    std::vector<float> x_abs = x, w_abs = w.values, b_abs = b.values;
    for (float& v : x_abs) v = std::abs(v);
    for (float& v : w_abs) v = std::abs(v);
    for (float& v : b_abs) v = std::abs(v);
    const std::vector<double> ref_abs = linear_ref(x_abs, m, k, w_abs, n, &b_abs, true);
    size_t other_way = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      // An f32 sum errs by about sqrt(k) roundings of its terms' magnitudes; 4 sqrt(k) bounds it.
      const double sum_error = 4.0 * std::sqrt(static_cast<double>(k + 1)) * kF32Epsilon * ref_abs[i];
      ASSERT_LE(std::abs(got[i] - ref[i]), bf16_step(ref[i]) / 2 + sum_error)
          << what << ": output " << i << " = " << got[i] << " for " << ref[i] << " is not one bf16 rounding of it";
      other_way += got[i] == round_bf16(static_cast<float>(ref[i])) ? 0 : 1;
    }
    EXPECT_LE(other_way, got.size() / 100) << what << ": too many outputs rounded away from the nearest";
    std::printf("RESULT linear bf16 output + bf16 bias %s: %zu of %zu rounded the other way (sums near a midpoint)\n",
                what.c_str(), other_way, got.size());
  }
  // An f32 x cannot feed a bf16 y (the projection writes bf16 only from the bf16 it multiplies).
  HostTensor w = host_tensor("w", {64, 64}, DType::BF16, true, 0.05f);
  const Linear prepared = prepare(w);
  Tensor y = backend().empty({300, 64}, DType::BF16);
  EXPECT_THROW(backend().linear(upload(randn(300 * 64), {300, 64}), prepared, y), Error);
}

TEST_F(CudaLinear, CublasLtAtAnyRows) {
  check_linear(1, 65, 96, true, DType::BF16, CudaLinearPath::Lt);
  check_linear(20, 33, 200, false, DType::BF16, CudaLinearPath::Lt);
}

TEST_F(CudaLinear, GemvAnyInFeatures) {  // K not a multiple of 8: the scalar path
  check_linear(2, 31, 33, true, DType::BF16);
  check_linear(7, 3, 15, false, DType::BF16);
  check_linear(1, 65, 1, false, DType::BF16);
}

TEST_F(CudaLinear, GemmMoreThanEightRows) {
  check_linear(9, 65, 96, true, DType::BF16);
  check_linear(31, 257, 136, false, DType::BF16);
  check_linear(257, 130, 584, true, DType::BF16);
  check_linear(65, 33, 33, true, DType::BF16);
  check_linear(300, 1, 7, false, DType::BF16);
  check_linear(randint(9, 600), randint(1, 400), randint(1, 700), randint(0, 1), DType::BF16);
}

TEST_F(CudaLinear, F32AndF16WeightsAreStoredAsBf16) {
  check_linear(3, 33, 64, true, DType::F32);
  check_linear(33, 17, 40, false, DType::F16);
}

// prepare_fused_linear: bf16 parts (stored BF16 or F32) side by side in one matrix, a bias on
// the middle part only (zero elsewhere), through the GEMV and the GEMM.
TEST_F(CudaLinear, FusedPartsFillTheirColumns) {
  for (const int64_t m : {1, 5, 40}) {
    const int64_t k = 8 * randint(1, 64);
    const std::vector<int64_t> outs = {randint(1, 300), randint(1, 100), randint(1, 100)};
    std::vector<HostTensor> w;
    for (size_t p = 0; p < outs.size(); ++p)
      w.push_back(host_tensor(cat("w", p), {outs[p], k}, p == 2 ? DType::F32 : DType::BF16, true,
                              0.05f));
    const HostTensor b = host_tensor("b1", {outs[1]}, DType::F32, false, 0.5f);
    std::vector<TensorInfo> infos;
    for (const HostTensor& t : w) infos.push_back(t.info());
    const TensorInfo bias_info = b.info();
    LinearWeight parts[3];
    for (size_t p = 0; p < outs.size(); ++p) {
      parts[p].weight = &infos[p];
      parts[p].out_features = outs[p];
      parts[p].in_features = k;
    }
    parts[1].bias = &bias_info;
    const Linear fused = backend().prepare_fused_linear({&parts[0], &parts[1], &parts[2]});
    const int64_t n = outs[0] + outs[1] + outs[2];
    ASSERT_EQ(fused.out_features, n);
    const std::vector<float> x = randn(static_cast<size_t>(m * k));
    Tensor y = poisoned({m, n});
    backend().linear(upload(x, {m, k}), fused, y);
    const bool round_x = rounds_activations(m, k, CudaLinearPath::Auto);
    std::vector<double> ref(static_cast<size_t>(m * n));
    for (size_t p = 0, column = 0; p < outs.size(); column += static_cast<size_t>(outs[p]), ++p) {
      const std::vector<double> part =
          linear_ref(x, m, k, w[p].values, outs[p], p == 1 ? &b.values : nullptr, round_x);
      for (int64_t r = 0; r < m; ++r)
        for (int64_t o = 0; o < outs[p]; ++o)
          ref[static_cast<size_t>(r * n + o) + column] = part[static_cast<size_t>(r * outs[p] + o)];
    }
    expect_close(cat("fused linear M=", m, " K=", k, " N=", outs[0], "|", outs[1], "|", outs[2]),
                 download(y), ref, kF32Tol);
  }
  const HostTensor a = host_tensor("a", {4, 16}, DType::BF16, true);
  const HostTensor narrow = host_tensor("narrow", {4, 8}, DType::BF16, true);
  const TensorInfo ai = a.info(), ni = narrow.info();
  LinearWeight wa, wn;
  wa.weight = &ai;
  wa.out_features = 4;
  wa.in_features = 16;
  wn.weight = &ni;
  wn.out_features = 4;
  wn.in_features = 8;
  try {
    backend().prepare_fused_linear({&wa, &wn});
    FAIL() << "prepare_fused_linear joined parts of 16 and 8 inputs";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'narrow' (float, 8 inputs) cannot join 'a' (float, 16 "
                                         "inputs): fused parts share in_features and format"),
              std::string::npos)
        << e.what();
  }
}

// Quantized weights are covered by test_cuda_quant.cpp; a bf16 tensor posing as 4-bit codes
// with too few inputs for a group is refused there.
TEST_F(CudaLinear, MalformedQuantizedWeightIsRefused) {
  HostTensor w = host_tensor("w", {8, 8}, DType::BF16, true);
  const TensorInfo wi = w.info();
  LinearWeight lw;
  lw.weight = &wi;
  lw.bits = 4;
  lw.group_size = 64;
  lw.out_features = 8;
  lw.in_features = 8;
  try {
    backend().prepare_linear(lw);
    FAIL() << "prepare_linear accepted a malformed 4-bit weight";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("input features must be a positive multiple of group size"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(CudaLinear, ShapeMismatchThrows) {
  const Linear prepared = prepare(host_tensor("w", {8, 16}, DType::BF16, true));
  Tensor y = poisoned({2, 8});
  EXPECT_THROW(backend().linear(upload(randn(2 * 15), {2, 15}), prepared, y), Error);
}

TEST_F(CudaLinear, PatchEmbed) {
  struct Case {
    int batch, height, width, patch, out;
  };
  for (const Case& c : {Case{2, 28, 42, 14, 33}, Case{1, 224, 224, 14, 64}, Case{3, 4, 6, 2, 5}}) {
    const int k = 3 * c.patch * c.patch;
    HostTensor w = host_tensor("patch", {c.out, 3, c.patch, c.patch}, DType::BF16, true, 0.05f);
    HostTensor b = host_tensor("patch_bias", {c.out}, DType::BF16, false);
    const TensorInfo wi = w.info(), bi = b.info();
    LinearWeight lw;
    lw.weight = &wi;
    lw.bias = &bi;
    lw.out_features = c.out;
    lw.in_features = k;
    const Linear prepared = backend().prepare_linear(lw);
    const std::vector<float> img = randn(size_t(c.batch) * c.height * c.width * 3);
    const int gh = c.height / c.patch, gw = c.width / c.patch;
    const int64_t rows = int64_t{c.batch} * gh * gw;
    Tensor y = poisoned({rows, c.out});
    backend().patch_embed(upload(img, {c.batch, c.height, c.width, 3}), prepared, c.patch, y);
    // Reference: the conv as PyTorch defines it, weight [out, 3, p, p] over NHWC pixels.
    std::vector<double> ref_rounded(rows * c.out), ref_exact(rows * c.out);
    for (int img_i = 0; img_i < c.batch; ++img_i)
      for (int py = 0; py < gh; ++py)
        for (int px = 0; px < gw; ++px)
          for (int o = 0; o < c.out; ++o) {
            double acc_r = b.values[o], acc_e = b.values[o];
            for (int ch = 0; ch < 3; ++ch)
              for (int ky = 0; ky < c.patch; ++ky)
                for (int kx = 0; kx < c.patch; ++kx) {
                  const float pixel =
                      img[((size_t(img_i) * c.height + py * c.patch + ky) * c.width + px * c.patch +
                           kx) *
                              3 +
                          ch];
                  const double wv = w.values[((size_t(o) * 3 + ch) * c.patch + ky) * c.patch + kx];
                  acc_r += wv * round_bf16(pixel);
                  acc_e += wv * pixel;
                }
            const size_t r = (size_t(img_i) * gh + py) * gw + px;
            ref_rounded[r * c.out + o] = acc_r;
            ref_exact[r * c.out + o] = acc_e;
          }
    const std::string shape =
        cat("B=", c.batch, " ", c.height, "x", c.width, " p=", c.patch, " out=", c.out);
    const std::vector<float> got = download(y);
    expect_close("patch_embed vs bf16-rounded pixels " + shape, got, ref_rounded, kF32Tol);
    expect_close("patch_embed vs exact pixels " + shape, got, ref_exact, kBf16ActivationTol);
  }
}

TEST_F(CudaLinear, EmbeddingReadsBf16Table) {
  const int vocab = 65, hidden = 31, count = 9;
  HostTensor table = host_tensor("embed", {vocab, hidden}, DType::BF16, true);
  const Linear prepared = prepare(table);
  std::vector<int32_t> ids(count);
  for (int32_t& id : ids) id = randint(0, vocab - 1);
  ids[0] = vocab - 1;
  Tensor y = poisoned({count, hidden});
  backend().embedding(upload_i32(ids, {count}), prepared, y, {});
  std::vector<double> ref(size_t(count) * hidden);
  for (int i = 0; i < count; ++i)
    for (int c = 0; c < hidden; ++c)
      ref[size_t(i) * hidden + c] = table.values[size_t(ids[i]) * hidden + c];
  expect_close(cat("embedding vocab=", vocab, " hidden=", hidden, " ids=", count), download(y), ref,
               0.0);
}

}  // namespace
}  // namespace moxin::cuda_test
