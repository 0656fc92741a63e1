// Quantized linears on the GPU (docs/model.md section 5) against an f64 reference computed from the
// MLX formula w = scale * q + bias on the codes: every path (GEMV M <= 2, tensor cores
// 3 <= M <= 64, dequantize + cuBLASLt above, and at every M where the input features are not a
// multiple of 64), 4/8 bits, groups of 32/64/128, BF16/F16/F32 scales, multi-part concatenation
// and the refusals of malformed weights.
//
// Tolerances (||got - ref|| / ||ref||), as test_cuda_linear.cpp:
//  - GEMV: f32 activations, the exact dequantized weights, f32 sums: 1e-5.
//  - Tensor-core and prefill paths: weights rounded to bf16 (bf16(f32 fma(scale, q, bias)))
//    and activations rounded to bf16. Against a reference that rounds both the same way the
//    error is f32 rounding (1e-5); against exact weights and activations it is the two bf16
//    roundings, ~2 x 2^-9 / sqrt(3) per product: 4e-3 bounds it.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "backend/cuda/cuda_backend_impl.hpp"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/quant_gemv_sweep.hpp"
#include "core/bf16.hpp"
#include "core/check.hpp"
#include "cuda_test_support.hpp"

namespace moxin::cuda_test {
namespace {

constexpr double kF32Tol = 1e-5;
constexpr double kBf16Tol = 4e-3;

// One quantized linear as a checkpoint holds it: random codes, scales and biases (biases near
// -scale * 2^(bits-1), so weights centre on zero as quantized ones do).
struct QuantPart {
  int64_t out = 0, in = 0;
  int bits = 0, group_size = 0;
  DType scale_dtype = DType::BF16;
  std::vector<uint32_t> codes;
  std::vector<uint8_t> scale_bytes, bias_bytes;
  std::vector<float> scales, biases;  // the stored values
  TensorInfo codes_info, scales_info, biases_info;
  LinearWeight weight;

  uint32_t code(int64_t row, int64_t col) const {
    const int per_word = 32 / bits;
    const uint32_t word = codes[static_cast<size_t>(row * (in / per_word) + col / per_word)];
    return (word >> (bits * (col % per_word))) & ((1u << bits) - 1);
  }
  float scale(int64_t row, int64_t col) const { return scales[row * (in / group_size) + col / group_size]; }
  float bias(int64_t row, int64_t col) const { return biases[row * (in / group_size) + col / group_size]; }
};

class CudaQuant : public CudaOpsTest {
 protected:
  std::unique_ptr<QuantPart> make_part(int64_t out, int64_t in, int bits, int group_size,
                                       DType scale_dtype, const std::string& name = "w") {
    auto p = std::make_unique<QuantPart>();
    p->out = out;
    p->in = in;
    p->bits = bits;
    p->group_size = group_size;
    p->scale_dtype = scale_dtype;
    p->codes.resize(static_cast<size_t>(out * in * bits / 32));
    std::uniform_int_distribution<uint32_t> word(0, UINT32_MAX);
    for (uint32_t& c : p->codes) c = word(rng_);
    const int64_t groups = out * (in / group_size);
    const std::vector<float> s = uniform(static_cast<size_t>(groups), 0.002f, 0.02f);
    const std::vector<float> jitter = uniform(static_cast<size_t>(groups), -0.5f, 0.5f);
    p->scale_bytes.resize(static_cast<size_t>(groups) * dtype_size(scale_dtype));
    p->bias_bytes.resize(p->scale_bytes.size());
    for (int64_t g = 0; g < groups; ++g) {
      const float b = -s[g] * static_cast<float>(1 << (bits - 1)) * (1.0f + jitter[g]);
      p->scales.push_back(store(s[g], scale_dtype, p->scale_bytes.data(), g));
      p->biases.push_back(store(b, scale_dtype, p->bias_bytes.data(), g));
    }
    p->codes_info = tensor_info(name + ".weight", DType::U32, {out, in * bits / 32}, p->codes.data(),
                                p->codes.size() * 4);
    p->scales_info = tensor_info(name + ".scales", scale_dtype, {out, in / group_size},
                                 p->scale_bytes.data(), p->scale_bytes.size());
    p->biases_info = tensor_info(name + ".biases", scale_dtype, {out, in / group_size},
                                 p->bias_bytes.data(), p->bias_bytes.size());
    p->weight.weight = &p->codes_info;
    p->weight.scales = &p->scales_info;
    p->weight.qbiases = &p->biases_info;
    p->weight.bits = bits;
    p->weight.group_size = group_size;
    p->weight.out_features = out;
    p->weight.in_features = in;
    return p;
  }

  static float store(float v, DType dtype, uint8_t* out, int64_t i) {
    if (dtype == DType::F32) {
      std::memcpy(out + 4 * i, &v, 4);
      return v;
    }
    const uint16_t h = dtype == DType::BF16 ? f32_to_bf16(v) : f32_to_f16(v);
    std::memcpy(out + 2 * i, &h, 2);
    return dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
  }

  // y = x W^T over the parts' rows concatenated; `rounded`: weights and x as the tensor-core
  // paths round them.
  static std::vector<double> reference(const std::vector<const QuantPart*>& parts,
                                       const std::vector<float>& x, int64_t m, bool rounded) {
    int64_t n = 0;
    for (const QuantPart* p : parts) n += p->out;
    const int64_t k = parts.front()->in;
    std::vector<double> w(static_cast<size_t>(n * k));
    int64_t row = 0;
    for (const QuantPart* p : parts)
      for (int64_t r = 0; r < p->out; ++r, ++row)
        for (int64_t c = 0; c < k; ++c) {
          const float s = p->scale(r, c), b = p->bias(r, c);
          const float q = static_cast<float>(p->code(r, c));
          w[row * k + c] = rounded ? double(round_bf16(std::fma(s, q, b))) : double(s) * q + b;
        }
    std::vector<double> y(static_cast<size_t>(m * n));
    for (int64_t i = 0; i < m; ++i)
      for (int64_t o = 0; o < n; ++o) {
        double acc = 0.0;
        for (int64_t c = 0; c < k; ++c) {
          const float xv = x[i * k + c];
          acc += w[o * k + c] * (rounded ? round_bf16(xv) : xv);
        }
        y[i * n + o] = acc;
      }
    return y;
  }

  void check(const std::vector<const QuantPart*>& parts, int64_t m) {
    std::vector<const LinearWeight*> weights;
    int64_t n = 0;
    for (const QuantPart* p : parts) {
      weights.push_back(&p->weight);
      n += p->out;
    }
    const QuantPart& f = *parts.front();
    const std::string what = cat("M=", m, " N=", n, " K=", f.in, " ", f.bits, "-bit g",
                                 f.group_size, " ", dtype_name(f.scale_dtype), " scales",
                                 parts.size() > 1 ? cat(" ", parts.size(), " parts") : "");
    const Linear prepared = parts.size() == 1 ? backend().prepare_linear(f.weight)
                                              : backend().prepare_fused_linear(weights);
    ASSERT_EQ(prepared.out_features, n);
    const std::vector<float> x = randn(static_cast<size_t>(m * f.in));
    const std::vector<float> got = linear_both_ways(x, m, f.in, prepared, what);
    // The GEMV and tensor-core kernels take input features in 64s; other widths (groups of 32)
    // dequantize for cuBLASLt at every row count.
    const bool kernels = f.in % 64 == 0;
    if (m <= cuda::kQuantGemvMaxRows && kernels) {
      expect_close("quant gemv " + what, got, reference(parts, x, m, false), kF32Tol);
    } else {
      const char* path = m <= cuda::kQuantMmaMaxRows && kernels ? "quant mma " : "quant prefill ";
      expect_close(path + what + " vs bf16-rounded", got, reference(parts, x, m, true), kF32Tol);
      expect_close(path + what + " vs exact", got, reference(parts, x, m, false), kBf16Tol);
    }
  }

  void check_one(int64_t m, int64_t n, int64_t k, int bits, int group_size,
                 DType scale_dtype = DType::BF16) {
    const auto part = make_part(n, k, bits, group_size, scale_dtype);
    check({part.get()}, m);
  }

  void expect_refused(const LinearWeight& w, const std::string& message) {
    try {
      backend().prepare_linear(w);
      FAIL() << "prepare_linear accepted a malformed quantized weight; expected: " << message;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    }
  }
};

TEST_F(CudaQuant, GemvOneOrTwoRows) {
  for (int bits : {4, 8})
    for (int gs : {32, 64, 128}) {
      check_one(1, 33, 192 * gs / 64, bits, gs);
      check_one(2, 257, 1088 / 64 * gs, bits, gs);  // full warp iterations plus a tail
      check_one(1, 65, gs, bits, gs);
    }
  // Every tiling the shape picks: M = 1 below 8192 rows (K split), from 8192 and from 16384
  // rows; M = 2 below and from 8192 rows.
  check_one(1, 1, 4096, 4, 64);
  check_one(1, 8200, 128, 4, 64);
  check_one(1, 16400, 128, 8, 64);
  check_one(2, 4100, 1024, 8, 128);
  check_one(2, 8200, 128, 4, 128);
  // 4-bit stages x in shared memory up to the per-block limit (M = 2: K <= 25600, M = 1:
  // K <= 51200) and takes the lane-per-word kernel beyond. 64 outputs: with 3 or 5, one output's
  // f32 rounding over such long sums can carry the norm-wise error (see SwigluOfOneRowInTheGemv).
  check_one(2, 64, 25600, 4, 64);
  check_one(2, 64, 26624, 4, 128);
  check_one(1, 64, 52224, 4, 64);
  check_one(randint(1, 2), randint(1, 300), 128 * randint(1, 24), 4 * randint(1, 2), 128);
}

// Every tiling of the 4-bit kernels that the benchmark sweeps to choose the defaults.
TEST_F(CudaQuant, Gemv4BitEveryTiling) {
  const cudaStream_t stream = dynamic_cast<cuda::CudaBackend&>(backend()).stream();
  for (int m : {1, 2})
    for (int gs : {32, 64, 128}) {
      // 70 rows: partial row groups; K: whole warp iterations of 1024 inputs plus a tail (the
      // kernels take inputs in 64s, so groups of 32 come in pairs).
      const auto part = make_part(70, 1088 / 64 * std::max(gs, 64), 4, gs, DType::BF16);
      const Linear prepared = backend().prepare_linear(part->weight);
      const cuda::QuantMatrix& q = dynamic_cast<const cuda::CudaLinear&>(*prepared.impl).quant;
      const std::vector<float> x = randn(static_cast<size_t>(m * part->in));
      const Tensor xt = upload(x, {m, part->in});
      const std::vector<double> ref = reference({part.get()}, x, m, false);
      int variants = 0;
      for (bool staged : {true, false})
        for (int rows : {2, 4})
          for (int split : {1, 2}) {
            Tensor y = poisoned({m, part->out});
            if (!cuda::quant_gemv4_variant(staged, m, rows, split, xt.ptr<float>(), q,
                                           y.ptr<float>(), stream))
              continue;
            ++variants;
            expect_close(cat("quant gemv 4-bit ", staged ? "staged" : "lane-per-word", " M=", m,
                             " rows/warp=", rows, " k-split=", split, " g", gs),
                         download(y), ref, kF32Tol);
          }
      EXPECT_EQ(variants, m == 1 ? 4 : 6) << "M=" << m;
    }
}

TEST_F(CudaQuant, TensorCoresThreeToSixtyFourRows) {
  for (int bits : {4, 8})
    for (int gs : {32, 64, 128}) {
      check_one(3, 33, 192 * gs / 64, bits, gs);
      check_one(8, 100, 1088 / 64 * gs, bits, gs);
      check_one(9, 31, gs, bits, gs);
      check_one(32, 100, 1088 / 64 * gs, bits, gs);
      check_one(64, 31, gs, bits, gs);
    }
  check_one(17, 3000, 640, 4, 64);  // few row blocks: K blocks split over blocks (atomic adds)
  check_one(randint(3, 64), randint(1, 300), 64 * randint(1, 40), 4 * randint(1, 2), 64);
}

// Every token tiling and K phasing of the tensor-core kernel that the benchmark compares. K of 200.5 (g64) or
// 201 (g128) 4-bit K blocks, twice as many 8-bit ones: many K blocks per thread block, and at g64 a
// last 4-bit block half past K.
TEST_F(CudaQuant, TensorCoresEveryTiling) {
  const cudaStream_t stream = dynamic_cast<cuda::CudaBackend&>(backend()).stream();
  for (int bits : {4, 8})
    for (int gs : {64, 128}) {
      const auto part = make_part(70, 25600 + gs, bits, gs, DType::BF16);
      const Linear prepared = backend().prepare_linear(part->weight);
      const cuda::QuantMatrix& q = dynamic_cast<const cuda::CudaLinear&>(*prepared.impl).quant;
      for (int m : {3, 8, 17}) {
        const std::vector<float> x = randn(static_cast<size_t>(m * part->in));
        const Tensor xt = upload(x, {m, part->in});
        Tensor scratch = backend().empty({cuda::quant_mma_scratch_elems(m, part->in)}, DType::BF16);
        const std::vector<double> ref = reference({part.get()}, x, m, true);
        int variants = 0;
        for (int tiles : {1, 2, 4, 8})
          for (int phases : {1, 2, 4}) {
            Tensor y = poisoned({m, part->out});
            if (!cuda::quant_mma_variant(tiles, phases, xt.ptr<float>(), m, q, scratch.ptr<uint16_t>(),
                                         y.ptr<float>(), stream))
              continue;
            ++variants;
            expect_close(cat("quant mma ", bits, "-bit g", gs, " M=", m, " token tiles=", tiles,
                             " K phases=", phases),
                         download(y), ref, kF32Tol);
          }
        EXPECT_EQ(variants, m <= 8 ? 12 : 6) << "M=" << m;
      }
    }
}

TEST_F(CudaQuant, PrefillDequantizesForCublasLt) {
  for (int bits : {4, 8})
    for (int gs : {32, 64, 128}) check_one(65, 47, 2 * gs, bits, gs);
  check_one(300, 130, 576, 4, 64);
  check_one(randint(65, 400), randint(1, 200), 128 * randint(1, 8), 4 * randint(1, 2), 128);
}

TEST_F(CudaQuant, F32AndF16Scales) {
  for (DType dtype : {DType::F32, DType::F16})
    for (int m : {1, 2, 5, 40, 70}) check_one(m, 40, 320, m % 2 ? 4 : 8, 64, dtype);
}

// A decoder layer's residual steps stay separate ops with quantized weights (see
// CudaBackend::fuses_residual_step: slower fused under PDL).
TEST_F(CudaQuant, ResidualStepsAreNotFused) {
  const auto part = make_part(64, 256, 4, 64, DType::BF16);
  const Linear prepared = backend().prepare_linear(part->weight);
  EXPECT_FALSE(backend().fuses_rms_norm_into(prepared, 1));
  EXPECT_FALSE(backend().fuses_add_into(prepared, 1));
}

// linear_swiglu of one activation row by a 4/8-bit gate | up matrix runs the GEMV with the swiglu
// in its epilogue: the bits of linear then swiglu, and silu(gate) * up of the f64 reference. Every
// tiling the GEMVs take at one row (gate | up rows below 8192, from 8192, from 16384; 4-bit K past
// the staged kernel's shared memory), BF16 and F32 scales, groups of 64 and 128; two rows keep the
// separate ops (compared the same way).
TEST_F(CudaQuant, SwigluOfOneRowInTheGemv) {
  struct Case {
    int64_t n, k;
    int bits, gs, m;
    DType scales;
  };
  // K = 52224 (the lane-per-word kernel, past the staged one's shared memory) with 64 outputs: the
  // norm-wise error of 3 outputs of such long f32 sums was one output's (1.65e-5 in one of five
  // H100 runs, session 27).
  for (const Case& c : {Case{70, 1088, 4, 64, 1, DType::BF16}, Case{4100, 512, 4, 128, 1, DType::BF16},
                        Case{33, 640, 4, 64, 1, DType::F32}, Case{64, 52224, 4, 64, 1, DType::BF16},
                        Case{40, 256, 8, 64, 1, DType::BF16}, Case{4100, 256, 8, 128, 1, DType::BF16},
                        Case{8200, 128, 8, 64, 1, DType::F32}, Case{40, 256, 4, 64, 2, DType::BF16}}) {
    const auto gate = make_part(c.n, c.k, c.bits, c.gs, c.scales, "gate");
    const auto up = make_part(c.n, c.k, c.bits, c.gs, c.scales, "up");
    const Linear prepared = backend().prepare_fused_linear({&gate->weight, &up->weight});
    const std::string what = cat("M=", c.m, " n=", c.n, " K=", c.k, " ", c.bits, "-bit g", c.gs, " ",
                                 dtype_name(c.scales), " scales");
    const std::vector<float> x = randn(static_cast<size_t>(c.m * c.k));
    const Tensor xt = upload(x, {c.m, c.k});
    Tensor gate_up = poisoned({c.m, 2 * c.n}), fused = poisoned({c.m, c.n});
    backend().linear_swiglu(xt, prepared, gate_up, fused);
    Tensor separate_gate_up = poisoned({c.m, 2 * c.n}), separate = poisoned({c.m, c.n});
    backend().linear(xt, prepared, separate_gate_up);
    backend().swiglu(separate_gate_up, separate);
    const std::vector<float> got = download(fused), want = download(separate);
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(got[i], want[i]) << what << ": output " << i << " differs from linear then swiglu";
    const std::vector<double> gu = reference({gate.get(), up.get()}, x, c.m, false);
    std::vector<double> ref(static_cast<size_t>(c.m * c.n));
    for (int64_t i = 0; i < c.m; ++i)
      for (int64_t j = 0; j < c.n; ++j) {
        const double g = gu[static_cast<size_t>(i * 2 * c.n + j)], u = gu[static_cast<size_t>(i * 2 * c.n + c.n + j)];
        ref[static_cast<size_t>(i * c.n + j)] = g / (1.0 + std::exp(-g)) * u;
      }
    expect_close("quant linear_swiglu " + what, got, ref, kF32Tol);
  }
}

TEST_F(CudaQuant, PartsConcatenateByRows) {
  for (int m : {1, 2, 8, 32, 65}) {
    const auto q = make_part(64, 256, 4, 64, DType::BF16, "q");
    const auto k = make_part(17, 256, 4, 64, DType::BF16, "k");
    const auto v = make_part(33, 256, 4, 64, DType::BF16, "v");
    check({q.get(), k.get(), v.get()}, m);
  }
}

TEST_F(CudaQuant, MalformedWeightsAreRefused) {
  auto p = make_part(8, 128, 4, 64, DType::BF16);
  LinearWeight w = p->weight;
  w.bits = 3;
  expect_refused(w, "bits 3 is not supported");
  w = p->weight;
  w.group_size = 16;
  expect_refused(w, "group size 16 is not supported");
  w = p->weight;
  w.in_features = 96;
  expect_refused(w, "must be a positive multiple of group size 64");
  TensorInfo wrong = p->codes_info;
  wrong.dtype = DType::BF16;
  w = p->weight;
  w.weight = &wrong;
  expect_refused(w, "U32 words of packed codes but is BF16");
  wrong = p->codes_info;
  wrong.nbytes -= 4;
  w.weight = &wrong;
  expect_refused(w, "U32 words of packed codes");
  w = p->weight;
  w.qbiases = nullptr;
  expect_refused(w, "lacks its scales or biases");
  TensorInfo f32_biases = p->biases_info;
  f32_biases.dtype = DType::F32;
  w = p->weight;
  w.qbiases = &f32_biases;
  expect_refused(w, "w.biases' is F32");
  TensorInfo bias = p->scales_info;
  w = p->weight;
  w.bias = &bias;
  expect_refused(w, "with a bias is not supported");
}

TEST_F(CudaQuant, FusedPartsMustShareTheFormat) {
  const auto a = make_part(8, 128, 4, 64, DType::BF16, "a");
  const auto b = make_part(8, 128, 8, 64, DType::BF16, "b");
  const auto c = make_part(8, 128, 4, 128, DType::BF16, "c");
  const auto d = make_part(8, 256, 4, 64, DType::BF16, "d");
  const auto e = make_part(8, 128, 4, 64, DType::F32, "e");
  for (const QuantPart* other : {b.get(), c.get(), d.get(), e.get()}) {
    try {
      backend().prepare_fused_linear({&a->weight, &other->weight});
      FAIL() << "fused parts of different formats were accepted";
    } catch (const Error& err) {
      const std::string msg = err.what();
      EXPECT_NE(msg.find("'" + other->codes_info.name + "'"), std::string::npos) << msg;
      EXPECT_NE(msg.find("cannot join"), std::string::npos) << msg;
    }
  }
}

}  // namespace
}  // namespace moxin::cuda_test
