// FP8 E4M3 linears on the GPU (docs/model.md section 5) against an f64 reference computed from
// the codes and per-row scales (w = e4m3(code) * scale): the GEMV (M <= 8, 16-byte loads and the
// one-code-per-lane path for K % 16 != 0), the tensor-core kernel on exact codes (3..64 rows), the
// FP8 tensor cores on per-token E4M3 activations above 64 rows (the default), the path with the
// tensor cores switched off (codes as bf16 through cuBLASLt, then the scales), parts fused by rows,
// and the refusals of malformed weights.
//
// Tolerances (||got - ref|| / ||ref||):
//  - GEMV: the codes widen exactly, f32 activations, f32 products and sums, one f32 multiply
//    by the scale: f32 rounding only, 1e-5 (as the other GEMVs, test_cuda_quant.cpp).
//  - Prefill: the codes are exact in bf16, the activations are rounded to bf16 for cuBLASLt.
//    Against a reference that rounds x the same way the error is f32 rounding (1e-5). Against
//    exact x each product carries one bf16 rounding of x: half an ulp of 8 significant bits is
//    2^-9..2^-8 of the value, uniform, so an rms of ~1.3e-3 that sums of random-sign products
//    keep. Two such roundings (the affine prefill path, docs/cuda-notes.md) measured
//    1.9e-3..2.5e-3, so one stays below ~1.8e-3: 3e-3 bounds it.
//  - FP8 tensor cores (set_fp8_tensor_cores): against a reference on the same per-token E4M3
//    activations (quantized on the host as the kernel does, f32_to_e4m3 being checked against
//    PyTorch by tests/py/test_quant_fp8.py) the products are exact and only the accumulation
//    rounds; Hopper's FP8 MMA keeps ~14 bits inside a k-block before cuBLASLt adds it into f32
//    (DeepSeek-V3 report, section 3.3.2): 2^-14 = 6e-5 relative, 2e-4 bounds it. Against exact
//    x the E4M3 rounding of the activations dominates: half an ulp of 4 significant bits is
//    2^-5..2^-4 of the value, rms ~3e-2: 5e-2 bounds it.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <tuple>

#include <cuda_runtime.h>

#include "backend/cuda/cuda_backend_impl.hpp"
#include "backend/cuda/kernels.hpp"
#include "core/check.hpp"
#include "core/fp8_e4m3.hpp"
#include "cuda_test_support.hpp"

namespace moxin::cuda_test {
namespace {

constexpr double kF32Tol = 1e-5;
constexpr double kBf16ActivationTol = 3e-3;
// Hopper's FP8 tensor cores keep ~13-14 mantissa bits while they add a k-chunk's products (the
// DeepSeek-V3 report, section 3.3.2, measured it; cuBLASLt without fast accumulation then adds the
// chunks in f32): each chunk's sum carries up to 2^-13 relative, so the output's relative error is
// a few times 2^-13 whatever K is (H200: 2.4e-4 at K = 256, 512, 1472 and 4096 alike). An
// f32-accumulating reference is held to 4 x 2^-13; a wrong code, scale or row costs ~1e-2.
constexpr double kFp8AccumulationTol = 4.0 / 8192;
constexpr double kFp8ActivationTol = 5e-2;

// FP8 tensor cores on or off for the rest of a scope, then as they were (the backend is shared).
class Fp8TensorCores {
 public:
  Fp8TensorCores(Backend& b, bool on) : backend_(dynamic_cast<cuda::CudaBackend&>(b)), was_(backend_.fp8_tensor_cores()) {
    backend_.set_fp8_tensor_cores(on);
  }
  ~Fp8TensorCores() { backend_.set_fp8_tensor_cores(was_); }
  Fp8TensorCores(const Fp8TensorCores&) = delete;
  Fp8TensorCores& operator=(const Fp8TensorCores&) = delete;

 private:
  cuda::CudaBackend& backend_;
  bool was_;
};

// One fp8 linear as a checkpoint holds it: random finite codes, scales like amax / 448 of
// weights of ~0.5 to ~5.
struct Fp8Part {
  int64_t out = 0, in = 0;
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  TensorInfo codes_info, scales_info;
  LinearWeight weight;
};

class CudaFp8 : public CudaOpsTest {
 protected:
  std::unique_ptr<Fp8Part> make_part(int64_t out, int64_t in, const std::string& name = "w") {
    auto p = std::make_unique<Fp8Part>();
    p->out = out;
    p->in = in;
    p->codes.resize(static_cast<size_t>(out * in));
    std::uniform_int_distribution<int> byte(0, 255);
    for (uint8_t& c : p->codes) {
      do c = static_cast<uint8_t>(byte(rng_));
      while ((c & 0x7F) == kE4M3NaN);
    }
    p->scales = uniform(static_cast<size_t>(out), 0.001f, 0.01f);
    p->codes_info = tensor_info(name + ".weight", DType::F8_E4M3, {out, in}, p->codes.data(), p->codes.size());
    p->scales_info = tensor_info(name + ".weight_scale", DType::F32, {out}, p->scales.data(), p->scales.size() * 4);
    p->weight.weight = &p->codes_info;
    p->weight.scales = &p->scales_info;
    p->weight.out_features = out;
    p->weight.in_features = in;
    return p;
  }

  // y = x W^T over the parts' rows concatenated, W = e4m3(code) * scale in f64; `round_x`:
  // activations rounded to bf16 as the prefill path does.
  static std::vector<double> reference(const std::vector<const Fp8Part*>& parts, const std::vector<float>& x,
                                       int64_t m, bool round_x) {
    int64_t n = 0;
    for (const Fp8Part* p : parts) n += p->out;
    const int64_t k = parts.front()->in;
    std::vector<double> y(static_cast<size_t>(m * n));
    int64_t row = 0;
    for (const Fp8Part* p : parts)
      for (int64_t r = 0; r < p->out; ++r, ++row)
        for (int64_t i = 0; i < m; ++i) {
          double acc = 0.0;
          for (int64_t c = 0; c < k; ++c) {
            const float xv = x[i * k + c];
            acc += double(e4m3_to_f32(p->codes[r * k + c])) * (round_x ? round_bf16(xv) : xv);
          }
          y[i * n + row] = acc * p->scales[r];
        }
    return y;
  }

  // Every path on exact activations (the FP8 tensor cores off).
  void check(const std::vector<const Fp8Part*>& parts, int64_t m) {
    const Fp8TensorCores exact(backend(), false);
    std::vector<const LinearWeight*> weights;
    int64_t n = 0;
    for (const Fp8Part* p : parts) {
      weights.push_back(&p->weight);
      n += p->out;
    }
    const Fp8Part& f = *parts.front();
    const std::string what = cat("M=", m, " N=", n, " K=", f.in, parts.size() > 1 ? cat(" ", parts.size(), " parts") : "");
    const Linear prepared = parts.size() == 1 ? backend().prepare_linear(f.weight)
                                              : backend().prepare_fused_linear(weights);
    ASSERT_EQ(prepared.out_features, n);
    const std::vector<float> x = randn(static_cast<size_t>(m * f.in));
    const std::vector<float> got = linear_both_ways(x, m, f.in, prepared, what);
    // The tensor-core decode kernel (3..64 rows, K in 64s) and prefill round x to bf16.
    const bool mma = m >= cuda::kFp8MmaMinRows && m <= cuda::kQuantMmaMaxRows && f.in % 64 == 0;
    if (!mma && m <= cuda::kFp8GemvMaxRows) {
      expect_close("fp8 gemv " + what, got, reference(parts, x, m, false), kF32Tol);
    } else {
      const std::string path = mma ? "fp8 mma " : "fp8 prefill ";
      expect_close(path + what + " vs bf16-rounded x", got, reference(parts, x, m, true), kF32Tol);
      expect_close(path + what + " vs exact x", got, reference(parts, x, m, false), kBf16ActivationTol);
    }
  }

  void check_one(int64_t m, int64_t n, int64_t k) {
    const auto part = make_part(n, k);
    check({part.get()}, m);
  }

  void expect_refused(const std::vector<const LinearWeight*>& parts, const std::string& message) {
    try {
      backend().prepare_fused_linear(parts);
      FAIL() << "prepare_fused_linear accepted a malformed fp8 weight; expected: " << message;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    }
  }
};

TEST_F(CudaFp8, DecodeOneToEightRows) {  // the GEMV, from 3 rows the tensor-core kernel
  for (int m = 1; m <= cuda::kFp8GemvMaxRows; ++m) {
    check_one(m, 37, 512);    // 16-byte loads, one step per lane
    check_one(m, 9, 16 * 33);  // a partial last step
  }
  check_one(1, 4100, 4096);  // fewer than 8192 rows: K split in two slices
  check_one(8, 1000, 14336);  // K >= 8192: four slices
  check_one(1, 300, 8208);
  check_one(2, 8195, 48);    // 8192 rows and more: one slice (8 rows per warp at M <= 2)
  check_one(5, 8200, 32);
  check_one(randint(1, 8), randint(1, 300), 16 * randint(1, 300));
}

TEST_F(CudaFp8, TensorCoresThreeToSixtyFourRows) {
  for (int m : {3, 8, 9, 17, 32, 64}) {
    check_one(m, 100, 1088);  // partial row groups, K blocks past the split's
    check_one(m, 31, 64);     // one K block
  }
  check_one(8, 3000, 4096);  // many K blocks per warp
  check_one(randint(3, 64), randint(1, 300), 64 * randint(1, 80));
}

TEST_F(CudaFp8, GemvOddInputWidths) {  // K % 16 != 0: one code per lane per step
  for (int m : {1, 3, 8}) {
    check_one(m, 17, 100);
    check_one(m, 5, 1);
    check_one(m, 33, 4103);
  }
  check_one(randint(1, 8), randint(1, 100), randint(1, 2000));
}

TEST_F(CudaFp8, PrefillNineToThreeHundredRows) {
  for (int m : {9, 16, 64, 65, 300}) check_one(m, 47, 256);
  check_one(33, 130, 4096);
  check_one(12, 47, 104);  // 4888 codes, not whole 16s: the widening's code-a-thread path
  check_one(randint(9, 300), randint(1, 200), 8 * randint(8, 100));  // K >= 64: see the tolerance note
}

// x [m, k] quantized per row as quantize_rows_e4m3 does: each value rounded to bf16 (as every
// prefill GEMM's input), scale = amax / 448 (1 for an all-zero row); the codes' values e4m3(code)
// and the row scales.
struct HostE4m3Rows {
  std::vector<float> codes;
  std::vector<float> scales;
};
HostE4m3Rows quantize_rows_codes_on_host(const std::vector<float>& x, int64_t m, int64_t k) {
  HostE4m3Rows q{std::vector<float>(x.size()), std::vector<float>(static_cast<size_t>(m))};
  for (int64_t r = 0; r < m; ++r) {
    float amax = 0.0f;
    for (int64_t c = 0; c < k; ++c) amax = std::fmax(amax, std::fabs(round_bf16(x[r * k + c])));
    float scale = amax / kE4M3Max;
    if (scale == 0.0f) scale = 1.0f;
    q.scales[r] = scale;
    for (int64_t c = 0; c < k; ++c) q.codes[r * k + c] = e4m3_to_f32(f32_to_e4m3(round_bf16(x[r * k + c]) / scale));
  }
  return q;
}

// The same as the values e4m3(code) * scale.
std::vector<float> quantize_rows_on_host(const std::vector<float>& x, int64_t m, int64_t k) {
  const HostE4m3Rows q = quantize_rows_codes_on_host(x, m, k);
  std::vector<float> out(x.size());
  for (int64_t r = 0; r < m; ++r)
    for (int64_t c = 0; c < k; ++c) out[r * k + c] = q.codes[r * k + c] * q.scales[r];
  return out;
}

TEST_F(CudaFp8, TensorCoresOnPerTokenActivations) {  // the default above 64 rows
  ASSERT_TRUE(dynamic_cast<cuda::CudaBackend&>(backend()).fp8_tensor_cores());
  // K up to 14336 (down's input): each row quantized from registers in 4, 8 or 16 float4s a thread.
  for (const auto& [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{65, 48, 256}, {128, 32, 512}, {300, 160, 4096},
                                {66, 16, 8192}, {70, 32, 14336}, {randint(65, 300), 16 * randint(1, 20), 16 * randint(4, 100)}}) {
    const auto part = make_part(n, k);
    const Linear prepared = backend().prepare_linear(part->weight);
    std::vector<float> x = randn(static_cast<size_t>(m * k));
    for (int64_t c = 0; c < k; ++c) x[c] = 0.0f;  // an all-zero token: scale 1, codes 0
    const std::string what = cat("fp8 tensor cores M=", m, " N=", n, " K=", k);
    const std::vector<float> got = linear_both_ways(x, m, k, prepared, what);
    expect_close(what + " vs quantized x", got, reference({part.get()}, quantize_rows_on_host(x, m, k), m, false),
                 kFp8AccumulationTol);
    expect_close(what + " vs exact x", got, reference({part.get()}, x, m, false), kFp8ActivationTol);
  }
  // K % 16 != 0: no FP8 GEMM; the codes-as-bf16 path answers.
  const auto odd = make_part(40, 100);
  const std::vector<float> x = randn(70 * 100);
  Tensor y = poisoned({70, 40});
  backend().linear(upload(x, {70, 100}), backend().prepare_linear(odd->weight), y);
  expect_close("fp8 tensor cores K=100 (falls back)", download(y), reference({odd.get()}, x, 70, true), kF32Tol);
  // Up to 64 rows (a decode batch) the activations stay exact: the tensor-core kernel on the codes.
  const auto part = make_part(96, 256);
  const std::vector<float> x64 = randn(64 * 256);
  Tensor y64 = poisoned({64, 96});
  backend().linear(upload(x64, {64, 256}), backend().prepare_linear(part->weight), y64);
  expect_close("fp8 at 64 rows (exact activations)", download(y64), reference({part.get()}, x64, 64, true), kF32Tol);
}

// gate | up on the FP8 tensor cores through linear_swiglu: the GEMM leaves the codes' products in
// bf16 (in gate_up's memory) and the swiglu applies the token and channel scales as it reads
// them. Where cuBLASLt leaves them unscaled (Hopper, CUDA 13) the two steps are checked apart:
// the products against the f64 sums of the codes' products (the accumulation's error plus one
// bf16 rounding, at most 2^-9 relative), then y against silu(g) * u computed from those very
// products and the scales (f32 rounding only). Always: y near the f64 swiglu of the reference on
// per-token E4M3 activations, and from bf16 x the same bits (a bf16 y: the f32 one rounded).
TEST_F(CudaFp8, SwigluOfTheTensorCoresAppliesTheScales) {
  ASSERT_TRUE(dynamic_cast<cuda::CudaBackend&>(backend()).fp8_tensor_cores());
  constexpr double kBf16Rounding = 1.0 / 512;
  for (const auto& [m, cols, k] : {std::tuple<int64_t, int64_t, int64_t>{65, 24, 256}, {300, 80, 512},
                                   {randint(65, 400), 8 * randint(1, 40), 16 * randint(4, 64)}}) {
    const auto gate = make_part(cols, k, "gate");
    const auto up = make_part(cols, k, "up");
    const Linear gate_up = backend().prepare_fused_linear({&gate->weight, &up->weight});
    const std::vector<float> x = randn(static_cast<size_t>(m * k));
    Tensor fused_gu = poisoned({m, 2 * cols}), fused_y = poisoned({m, cols});
    backend().linear_swiglu(upload(x, {m, k}), gate_up, fused_gu, fused_y);
    const std::vector<float> got = download(fused_y);
    const std::string what = cat("fp8 tensor-core swiglu M=", m, " cols=", cols, " K=", k);
    const HostE4m3Rows xq = quantize_rows_codes_on_host(x, m, k);

    if (!cuda::LtGemm(cuda::kGemmWorkspaceBytes).fp8_scales_in_epilogue(static_cast<int>(m), static_cast<int>(2 * cols),
                                                                        static_cast<int>(k), true)) {
      // gate_up's memory from its start holds [m, 2 cols] bf16 products.
      const std::vector<float> memory = download(fused_gu);
      std::vector<uint16_t> bits(static_cast<size_t>(m * 2 * cols));
      std::memcpy(bits.data(), memory.data(), bits.size() * sizeof(uint16_t));
      std::vector<float> products(bits.size());
      for (size_t i = 0; i < bits.size(); ++i) {
        const uint32_t widened = uint32_t{bits[i]} << 16;
        std::memcpy(&products[i], &widened, sizeof(float));
      }
      std::vector<double> sums(products.size());
      for (int64_t r = 0; r < m; ++r)
        for (int64_t c = 0; c < 2 * cols; ++c) {
          const Fp8Part& part = c < cols ? *gate : *up;
          const int64_t row = c % cols;
          double acc = 0.0;
          for (int64_t i = 0; i < k; ++i)
            acc += double(e4m3_to_f32(part.codes[row * k + i])) * xq.codes[r * k + i];
          sums[static_cast<size_t>(r * 2 * cols + c)] = acc;
        }
      expect_close(what + " bf16 products", products, sums, kFp8AccumulationTol + kBf16Rounding);
      std::vector<double> from_products(got.size());
      for (int64_t r = 0; r < m; ++r)
        for (int64_t c = 0; c < cols; ++c) {
          const size_t at = static_cast<size_t>(r * 2 * cols + c);
          const float g = products[at] * (xq.scales[r] * gate->scales[c]);
          const float u = products[at + cols] * (xq.scales[r] * up->scales[c]);
          from_products[static_cast<size_t>(r * cols + c)] = double(g) / (1.0 + std::exp(-double(g))) * u;
        }
      expect_close(what + " vs swiglu of its products", got, from_products, kF32Tol);
    }

    const std::vector<double> gu = reference({gate.get(), up.get()}, quantize_rows_on_host(x, m, k), m, false);
    std::vector<double> ref(static_cast<size_t>(m * cols));
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const double g = gu[static_cast<size_t>(r * 2 * cols + c)], u = gu[static_cast<size_t>(r * 2 * cols + cols + c)];
        ref[static_cast<size_t>(r * cols + c)] = g / (1.0 + std::exp(-g)) * u;
      }
    // silu(g) * u moves a relative error of g by at most 1 + max g (1 - sigmoid(g)) = 1.28 times
    // and adds u's: the products' bound, 2.28 times.
    expect_close(what + " vs quantized x", got, ref, 2.28 * (kFp8AccumulationTol + kBf16Rounding));

    // x in bf16 (a norm's output where the linears after it differ), y in bf16 (down's input where
    // down is not FP8); per-token E4M3 in and out: OpsWriteTheCodesTheFp8LinearWouldMake.
    ASSERT_EQ(backend().linear_input_dtype(gate_up, m), DType::F8_E4M3) << what;
    Tensor bf16_gu = poisoned({m, 2 * cols}), bf16_y = backend().empty({m, cols}, DType::BF16);
    backend().linear_swiglu(upload_bf16(x, {m, k}), gate_up, bf16_gu, bf16_y);
    const std::vector<float> got_bf16 = download(bf16_y);
    size_t differ = 0;
    for (size_t i = 0; i < got.size(); ++i) differ += got_bf16[i] != round_bf16(got[i]);
    EXPECT_EQ(differ, 0u) << what << ": " << differ << " of " << got.size()
                          << " bf16 outputs from bf16 x are not the f32 outputs rounded";
  }
}

// o and down at prefill rows through linear_add_rms_norm: the residual add applies the FP8
// products' token and channel scales as it reads them (no scale pass). The same bits as linear
// then add_rms_norm, in the residual and in the normed output (f32 or bf16), from f32 or bf16 x.
TEST_F(CudaFp8, LinearAddRmsNormFoldsTheScalesIntoTheAdd) {
  ASSERT_TRUE(dynamic_cast<cuda::CudaBackend&>(backend()).fp8_tensor_cores());
  constexpr float kEps = 1e-5f;
  for (const auto& [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{65, 64, 256}, {300, 96, 512},
                                {randint(65, 300), 4 * randint(1, 64), 16 * randint(4, 64)}}) {
    const auto part = make_part(n, k);
    const Linear w = backend().prepare_linear(part->weight);
    const std::vector<float> x = randn(static_cast<size_t>(m * k));
    const std::vector<float> residual = residual_rows(static_cast<size_t>(m * n));
    const Tensor norm_w = upload(uniform(static_cast<size_t>(n), 0.5f, 1.5f), {n});
    for (const bool bf16_x : {false, true})
      for (const DType normed_dtype : {DType::F32, DType::BF16}) {
        const std::string what = cat("fp8 linear_add_rms_norm M=", m, " N=", n, " K=", k, bf16_x ? " bf16 x" : " f32 x",
                                     normed_dtype == DType::BF16 ? ", bf16 normed" : ", f32 normed");
        const Tensor a = bf16_x ? upload_bf16(x, {m, k}) : upload(x, {m, k});
        Tensor fused_x = upload(residual, {m, n}), fused_out = poisoned({m, n});
        Tensor fused_normed = backend().empty({m, n}, normed_dtype);
        backend().linear_add_rms_norm(a, w, fused_out, fused_x, norm_w, kEps, fused_normed);
        Tensor plain_x = upload(residual, {m, n}), plain_out = poisoned({m, n});
        Tensor plain_normed = backend().empty({m, n}, normed_dtype);
        backend().linear(a, w, plain_out);
        backend().add_rms_norm(plain_x, plain_out, norm_w, kEps, plain_normed);
        for (const auto& [got, want, name] : {std::tuple{&fused_x, &plain_x, "residual"},
                                              std::tuple{&fused_normed, &plain_normed, "normed"}}) {
          const std::vector<float> g = download(*got), e = download(*want);
          size_t differ = 0;
          for (size_t i = 0; i < g.size(); ++i) differ += std::memcmp(&g[i], &e[i], sizeof(float)) != 0;
          EXPECT_EQ(differ, 0u) << what << ": " << differ << " of " << g.size() << " " << name
                                << " values differ from linear + add_rms_norm";
        }
      }
  }
}

// Per-token E4M3 activations (linear_input_dtype F8_E4M3 at FP8 tensor-core rows): the ops that
// write them directly (rms_norm, add_rms_norm, swiglu, and as the outputs of linear_swiglu and
// linear_add_rms_norm) give byte for byte the codes and row scales quantize_rows_e4m3 makes from
// their bf16 output, on rows of float4s (one or several a thread) and on other widths; a linear
// reading them gives the bits of its bf16 input (linear_both_ways checks that for every FP8 linear
// in this file, the fused ops here).
TEST_F(CudaFp8, OpsWriteTheCodesTheFp8LinearWouldMake) {
  ASSERT_TRUE(dynamic_cast<cuda::CudaBackend&>(backend()).fp8_tensor_cores());
  constexpr float kEps = 1e-5f;
  const auto expect_same_bytes = [](const std::vector<uint8_t>& got, const std::vector<uint8_t>& want,
                                    const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    size_t differ = 0;
    for (size_t i = 0; i < got.size(); ++i) differ += got[i] != want[i];
    EXPECT_EQ(differ, 0u) << what << ": " << differ << " of " << got.size() << " bytes (codes, then row scales) differ";
  };
  const auto expect_codes_of = [&](const Tensor& got, const Tensor& bf16_out, const std::string& what) {
    expect_same_bytes(download_e4m3(got), download_e4m3(quantize_e4m3(bf16_out)),
                      what + " vs quantize_rows_e4m3 of the bf16 output");
  };
  const auto expect_same_floats = [&](const Tensor& got, const Tensor& want, const std::string& what) {
    const std::vector<float> g = download(got), e = download(want);
    EXPECT_EQ(std::memcmp(g.data(), e.data(), g.size() * sizeof(float)), 0) << what;
  };
  const int64_t narrow = 4 * randint(1, 300), odd_width = 4 * randint(1, 300) + 2;
  for (const int64_t cols : {int64_t{4096}, int64_t{14336}, narrow, odd_width}) {
    const int64_t m = randint(65, 200);
    const std::string shape = cat(" M=", m, " cols=", cols);
    const std::vector<float> x = residual_rows(static_cast<size_t>(m * cols));
    const Tensor norm_w = upload(uniform(static_cast<size_t>(cols), 0.5f, 1.5f), {cols});
    const auto codes = [&] { return backend().empty({m, cols}, DType::F8_E4M3); };
    const auto bf16 = [&] { return backend().empty({m, cols}, DType::BF16); };
    Tensor e = codes(), b = bf16();
    const Tensor xt = upload(x, {m, cols});
    backend().rms_norm(xt, norm_w, kEps, e);
    backend().rms_norm(xt, norm_w, kEps, b);
    expect_codes_of(e, b, "rms_norm" + shape);

    const Tensor y = upload(randn(static_cast<size_t>(m * cols)), {m, cols});
    Tensor x_e = upload(x, {m, cols}), x_b = upload(x, {m, cols});
    e = codes(), b = bf16();
    backend().add_rms_norm(x_e, y, norm_w, kEps, e);
    backend().add_rms_norm(x_b, y, norm_w, kEps, b);
    expect_codes_of(e, b, "add_rms_norm" + shape);
    expect_same_floats(x_e, x_b, "add_rms_norm's residual" + shape);

    const Tensor gate_up = upload(randn(static_cast<size_t>(m * 2 * cols), 2.0f), {m, 2 * cols});
    e = codes(), b = bf16();
    backend().swiglu(gate_up, e);
    backend().swiglu(gate_up, b);
    expect_codes_of(e, b, "swiglu" + shape);
  }

  const int64_t m = randint(65, 300), k = 16 * randint(4, 64), cols = 8 * randint(1, 40);
  const std::string shape = cat(" M=", m, " K=", k, " cols=", cols);
  const Tensor x_bf16 = upload_bf16(randn(static_cast<size_t>(m * k)), {m, k});
  const Tensor x_e4m3 = quantize_e4m3(x_bf16);
  {  // gate | up on the FP8 tensor cores, the swiglu applying the scales: from bf16 and from E4M3 x
    const auto gate = make_part(cols, k, "gate");
    const auto up = make_part(cols, k, "up");
    const Linear gate_up = backend().prepare_fused_linear({&gate->weight, &up->weight});
    Tensor gu = poisoned({m, 2 * cols}), e = backend().empty({m, cols}, DType::F8_E4M3);
    Tensor b = backend().empty({m, cols}, DType::BF16);
    backend().linear_swiglu(x_bf16, gate_up, gu, e);
    backend().linear_swiglu(x_bf16, gate_up, gu, b);
    expect_codes_of(e, b, "fp8 linear_swiglu" + shape);
    Tensor e_from_codes = backend().empty({m, cols}, DType::F8_E4M3);
    backend().linear_swiglu(x_e4m3, gate_up, gu, e_from_codes);
    expect_same_bytes(download_e4m3(e_from_codes), download_e4m3(e), "fp8 linear_swiglu from E4M3 x" + shape);
  }
  {  // bf16 gate | up before an FP8 down (a mixed checkpoint): the bf16 products' swiglu
    const HostTensor w = host_tensor("gate_up", {2 * cols, k}, DType::BF16, true);
    const Linear gate_up = prepare(w);
    Tensor gu = poisoned({m, 2 * cols}), e = backend().empty({m, cols}, DType::F8_E4M3);
    Tensor b = backend().empty({m, cols}, DType::BF16);
    backend().linear_swiglu(x_bf16, gate_up, gu, e);
    backend().linear_swiglu(x_bf16, gate_up, gu, b);
    expect_codes_of(e, b, "bf16 linear_swiglu" + shape);
  }
  {  // o / down with the residual add applying the scales: the next norm's output as codes
    const int64_t n = 8 * randint(1, 64);
    const auto part = make_part(n, k);
    const Linear w = backend().prepare_linear(part->weight);
    const std::vector<float> residual = residual_rows(static_cast<size_t>(m * n));
    const Tensor norm_w = upload(uniform(static_cast<size_t>(n), 0.5f, 1.5f), {n});
    Tensor x_e = upload(residual, {m, n}), x_b = upload(residual, {m, n}), x_c = upload(residual, {m, n});
    Tensor out = poisoned({m, n}), e = backend().empty({m, n}, DType::F8_E4M3);
    Tensor b = backend().empty({m, n}, DType::BF16);
    backend().linear_add_rms_norm(x_bf16, w, out, x_e, norm_w, kEps, e);
    backend().linear_add_rms_norm(x_bf16, w, out, x_b, norm_w, kEps, b);
    expect_codes_of(e, b, cat("fp8 linear_add_rms_norm N=", n) + shape);
    expect_same_floats(x_e, x_b, "fp8 linear_add_rms_norm's residual" + shape);
    Tensor e_from_codes = backend().empty({m, n}, DType::F8_E4M3);
    backend().linear_add_rms_norm(x_e4m3, w, out, x_c, norm_w, kEps, e_from_codes);
    expect_same_floats(x_c, x_b, "fp8 linear_add_rms_norm's residual from E4M3 x" + shape);
    expect_same_bytes(download_e4m3(e_from_codes), download_e4m3(e), "fp8 linear_add_rms_norm from E4M3 x" + shape);
  }

  // Which linears ask for codes: FP8 ones past the decode rows whose shape one FP8 GEMM takes.
  const auto fp8 = make_part(64, 256);
  const Linear wide = backend().prepare_linear(fp8->weight);
  EXPECT_EQ(backend().linear_input_dtype(wide, cuda::kQuantMmaMaxRows + 1), DType::F8_E4M3);
  EXPECT_EQ(backend().linear_input_dtype(wide, cuda::kQuantMmaMaxRows), DType::F32);
  const auto odd = make_part(44, 256);  // 44 outputs: no bf16-output FP8 GEMM (8 a 16-byte row)
  EXPECT_EQ(backend().linear_input_dtype(backend().prepare_linear(odd->weight), 100), DType::BF16);
  // Ops whose blocks do not see whole rows refuse them, by name.
  Tensor e = backend().empty({70, 64}, DType::F8_E4M3);
  EXPECT_THROW(backend().gelu_erf(upload(randn(70 * 64), {70, 64}), e), Error);
  const Tensor odd_x = quantize_e4m3(upload_bf16(randn(100 * 256), {100, 256}));
  Tensor odd_y = poisoned({100, 44});
  EXPECT_THROW(backend().linear(odd_x, backend().prepare_linear(odd->weight), odd_y), Error);
}

// q | k | v of a prefill from per-token E4M3 input through linear_rope_paged_attention: the FP8
// GEMM's products left unscaled and the RoPE + K/V write applying the token and channel scales
// give the bits of linear then rope_paged_attention: the same attention output, the same rotated
// q, the same cache bytes (bf16 and FP8 caches), for two sequences prefilled together.
TEST_F(CudaFp8, QkvScalesGoToTheRope) {
  ASSERT_TRUE(dynamic_cast<cuda::CudaBackend&>(backend()).fp8_tensor_cores());
  constexpr int kQHeads = 4, kKvHeads = 2;
  for (const int head_dim : {64, 128})
    for (const KvCacheDType kv : {KvCacheDType::Auto, KvCacheDType::Fp8E4M3}) {
      KvCacheConfig cfg;
      cfg.layers = 1;
      cfg.kv_heads = kKvHeads;
      cfg.head_dim = head_dim;
      cfg.block_size = 16;
      cfg.dtype = kv;
      const int lengths[2] = {randint(33, 150), randint(33, 150)};
      const int width_blocks = (150 + cfg.block_size - 1) / cfg.block_size;
      cfg.num_blocks = 2 * width_blocks;
      std::vector<int32_t> tables(static_cast<size_t>(2 * width_blocks)), seq, pos;
      for (size_t b = 0; b < tables.size(); ++b) tables[b] = static_cast<int32_t>(tables.size() - 1 - b);
      for (int s = 0; s < 2; ++s)
        for (int p = 0; p < lengths[s]; ++p) {
          seq.push_back(s);
          pos.push_back(p);
        }
      const auto m = static_cast<int64_t>(seq.size());
      AttentionBatch batch;
      batch.token_seq = upload_i32(seq, {m});
      batch.token_pos = upload_i32(pos, {m});
      batch.block_tables = upload_i32(tables, {2, width_blocks});
      batch.max_context = std::max(lengths[0], lengths[1]);
      const Tensor positions = batch.token_pos;

      const int64_t k = 16 * randint(4, 32), n = int64_t{kQHeads + 2 * kKvHeads} * head_dim;
      const auto part = make_part(n, k, "qkv");
      const Linear w = backend().prepare_linear(part->weight);
      const Tensor x = quantize_e4m3(upload_bf16(randn(static_cast<size_t>(m * k)), {m, k}));
      ASSERT_EQ(backend().linear_input_dtype(w, m), DType::F8_E4M3);
      const std::string what = cat("fp8 qkv + rope M=", m, " K=", k, " D=", head_dim,
                                   kv == KvCacheDType::Fp8E4M3 ? ", fp8 cache" : ", bf16 cache");

      const auto run = [&](bool folded) {
        auto cache = backend().create_kv_cache(cfg);
        Tensor qkv = poisoned({m, n}), q = poisoned({m, int64_t{kQHeads} * head_dim});
        Tensor y = poisoned({m, int64_t{kQHeads} * head_dim});
        if (folded) {
          backend().linear_rope_paged_attention(x, w, qkv, positions, 1e6f, *cache, 0, batch, kQHeads, q, y);
        } else {
          backend().linear(x, w, qkv);
          backend().rope_paged_attention(qkv, positions, 1e6f, *cache, 0, batch, kQHeads, q, y);
        }
        const cuda::PagedLayer layer = dynamic_cast<cuda::CudaKvCache&>(*cache).layer(0);
        std::vector<uint8_t> bytes(cuda::CudaKvCache::layer_bytes(cfg));
        backend().synchronize();
        const void* start = layer.k != nullptr ? static_cast<const void*>(layer.k) : static_cast<const void*>(layer.k8);
        EXPECT_EQ(cudaMemcpy(bytes.data(), start, bytes.size(), cudaMemcpyDeviceToHost), cudaSuccess);
        return std::tuple{download(y), download(q), bytes};
      };
      const auto [y_folded, q_folded, cache_folded] = run(true);
      const auto [y_plain, q_plain, cache_plain] = run(false);
      EXPECT_EQ(std::memcmp(y_folded.data(), y_plain.data(), y_plain.size() * sizeof(float)), 0)
          << what << ": attention output differs from linear + rope_paged_attention";
      EXPECT_EQ(std::memcmp(q_folded.data(), q_plain.data(), q_plain.size() * sizeof(float)), 0)
          << what << ": rotated q differs";
      EXPECT_TRUE(cache_folded == cache_plain) << what << ": the cache holds other bytes";
      size_t finite = 0;
      for (const float v : y_folded) finite += std::isfinite(v);
      EXPECT_EQ(finite, y_folded.size()) << what << ": outputs not written";
    }
}

TEST_F(CudaFp8, PartsConcatenateByRows) {
  for (int m : {1, 2, 8, 9, 65}) {
    const auto q = make_part(64, 256, "q");
    const auto k = make_part(17, 256, "k");
    const auto v = make_part(33, 256, "v");
    check({q.get(), k.get(), v.get()}, m);
  }
}

TEST_F(CudaFp8, MalformedWeightsAreRefused) {
  const auto p = make_part(8, 128);
  LinearWeight w = p->weight;
  TensorInfo short_codes = p->codes_info;
  short_codes.nbytes -= 1;
  w.weight = &short_codes;
  expect_refused({&w}, "but the layer is [8, 128]");
  w = p->weight;
  TensorInfo bf16_scales = p->scales_info;
  bf16_scales.dtype = DType::BF16;
  w.scales = &bf16_scales;
  expect_refused({&w}, "needs an F32 weight_scale of 8 values");
  w = p->weight;
  w.scales = nullptr;
  expect_refused({&w}, "needs an F32 weight_scale");
  w = p->weight;
  TensorInfo bias = p->scales_info;
  w.bias = &bias;
  expect_refused({&w}, "with a bias is not supported");
  const auto wide = make_part(8, 256, "wide");
  expect_refused({&p->weight, &wide->weight}, "cannot join");
  const HostTensor dense = host_tensor("dense", {8, 128}, DType::BF16, true);
  const TensorInfo dense_info = dense.info();
  LinearWeight dense_weight;
  dense_weight.weight = &dense_info;
  dense_weight.out_features = 8;
  dense_weight.in_features = 128;
  expect_refused({&p->weight, &dense_weight}, "cannot join");
  expect_refused({&dense_weight, &p->weight}, "cannot join");
}

}  // namespace
}  // namespace moxin::cuda_test
