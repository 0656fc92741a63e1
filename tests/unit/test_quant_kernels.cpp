// Quantized linear on the CPU (both GEMV and dequantize-then-GEMM regimes) against a double
// matmul on the dequantized weights, for 4/8 bits x group 64/128 at awkward shapes, every
// kernel table and 1 or 2 threads; every decode GEMV path (generic, AVX2, AVX2 integer, AVX-VNNI,
// AVX-512, VNNI, NEON) and every prefill dequantizer against the MLX formula evaluated in double
// on random codes; plus the quantizer's own error bound.
#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>

#include "backend/cpu/cpu_quant_kernels.hpp"
#include "core/thread_pool.hpp"
#include "quant/affine_quant.hpp"
#include "test_cpu_common.hpp"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

namespace moxin::cpu_test {
namespace {

using cpu::kQuantGemvMaxRows;
using cpu::QuantGemvPath;
using cpu::quant_gemv;
using cpu::quant_gemv_path_name;
using cpu::quant_gemv_paths;

// Whether the kernel's /proc/cpuinfo lists `flag` for the first CPU (an account of the CPU's
// features independent of the CPUID reads under test).
[[maybe_unused]] bool cpuinfo_lists_flag(const std::string& flag) {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("flags", 0) == 0) {
      std::istringstream words(line.substr(line.find(':') + 1));
      for (std::string word; words >> word;)
        if (word == flag) return true;
      return false;
    }
  return false;
}

std::unique_ptr<QuantizedTestMatrix> make_quant_case(const OwnedTensor& w, int64_t N, int64_t K, int bits, int group) {
  return quantize_for_test("w.weight", w.info.data, w.info.dtype, N, K, bits, group);
}

// The GEMV sums scale * sum(q x) + bias * sum(x) per group instead of sum((scale q + bias) x):
// both are f32 sums of K products, so they agree to f32 accumulation error, which scales with
// sum |x| |w| (not with |y|, which cancellation can make arbitrarily small).
constexpr double kToleranceOfAbsSum = 1e-6;

TEST(QuantLinear, MatchesMatmulOnDequantizedWeights) {
  Random rng(test_seed());
  struct Shape {
    int64_t M, N;
    int groups;
  };
  const std::vector<Shape> shapes{{1, 1, 1}, {1, 37, 3}, {3, 17, 2}, {8, 33, 5}, {9, 7, 1}, {20, 9, 2}, {33, 65, 3}};
  for (int bits : {4, 8})
    for (int group : {32, 64, 128})
      for (DType dtype : {DType::BF16, DType::F32})
        for (const Shape& s : shapes) {
          const int64_t K = s.groups * group;
          auto w = make_tensor("w", dtype, {s.N, K}, rng.uniform(static_cast<size_t>(s.N * K), -0.5f, 1.5f));
          auto q = make_quant_case(*w, s.N, K, bits, group);
          const std::vector<float> x = rng.uniform(static_cast<size_t>(s.M * K));
          std::vector<double> ref(static_cast<size_t>(s.M * s.N));
          double ref_norm = 0, abs_norm = 0;
          for (int64_t m = 0; m < s.M; ++m)
            for (int64_t n = 0; n < s.N; ++n) {
              double sum = 0, abs_sum = 0;
              for (int64_t k = 0; k < K; ++k) {
                const double p = static_cast<double>(x[m * K + k]) * q->dequantized[n * K + k];
                sum += p;
                abs_sum += std::abs(p);
              }
              ref[m * s.N + n] = sum;
              ref_norm += sum * sum;
              abs_norm += abs_sum * abs_sum;
            }
          expect_matches(cat("quantized linear ", bits, "-bit g", group, " ", dtype_name(dtype), " M=", s.M,
                             " N=", s.N, " K=", K),
                         ref, kToleranceOfAbsSum * std::sqrt(abs_norm / ref_norm), [&](Backend& be) {
                           const Linear l = be.prepare_linear(q->linear());
                           Tensor xt = be.from_host_f32(x.data(), {s.M, K});
                           Tensor y = poisoned(be, {s.M, s.N});
                           be.linear(xt, l, y);
                           return host(be, y);
                         });
        }
}

// A server's decode batch of up to kQuantGemvChunkedMaxRows rows: where no AMX GEMM takes it,
// each row comes out with the bits it gets alone (so batching does not change a greedy answer).
TEST(QuantLinear, DecodeBatchRowsEqualTheRowAlone) {
  Random rng(test_seed());
  const int64_t M = cpu::kQuantGemvChunkedMaxRows - 3, N = 24, K = 256;
  auto w = make_tensor("w", DType::BF16, {N, K}, rng.uniform(static_cast<size_t>(N * K)));
  for (int bits : {4, 8}) {
    auto q = make_quant_case(*w, N, K, bits, 64);
    const std::vector<float> x = rng.uniform(static_cast<size_t>(M * K));
    for (const cpu::Kernels* table : cpu::supported_kernels()) {
      if (std::string_view(table->name) == "amx") continue;  // its rows past 8 take the AMX GEMM
      cpu::CpuBackend backend(2, *table);
      const Linear l = backend.prepare_linear(q->linear());
      Tensor y = backend.empty_act({M, N});
      backend.linear(backend.from_host_f32(x.data(), {M, K}), l, y);
      const std::vector<float> batch = host(backend, y);
      for (int64_t m = 0; m < M; ++m) {
        Tensor one = backend.empty_act({1, N});
        backend.linear(backend.from_host_f32(x.data() + m * K, {1, K}), l, one);
        const std::vector<float> alone = host(backend, one);
        EXPECT_TRUE(std::equal(alone.begin(), alone.end(), batch.begin() + m * N))
            << table->name << " " << bits << "-bit: row " << m << " of " << M << " differs from the row alone";
      }
    }
  }
}

// Random packed codes (every value of `bits` bits equally likely) with random scales and biases
// of a given dtype, as a checkpoint would hold them.
struct RandomQuantWeights {
  std::vector<uint32_t> codes;
  std::vector<uint16_t> halves;  // scales then biases, BF16 or F16
  std::vector<float> floats;     // scales then biases, F32
  QuantView view;

  RandomQuantWeights(Random& rng, DType dtype, int64_t N, int64_t K, int bits, int group) {
    const int64_t groups = N * (K / group);
    codes.resize(static_cast<size_t>(N * K * bits / 32));
    for (uint32_t& c : codes) c = static_cast<uint32_t>(rng.engine()());
    std::vector<float> values = rng.uniform(static_cast<size_t>(groups), 0.001f, 0.05f);
    const std::vector<float> biases = rng.uniform(static_cast<size_t>(groups), -0.5f, 0.1f);
    values.insert(values.end(), biases.begin(), biases.end());
    const void* data = nullptr;
    if (dtype == DType::F32) {
      floats = values;
      data = floats.data();
    } else {
      for (float v : values) halves.push_back(dtype == DType::BF16 ? f32_to_bf16(v) : f32_to_f16(v));
      data = halves.data();
    }
    const size_t bias_offset = static_cast<size_t>(groups) * dtype_size(dtype);
    view = QuantView{codes.data(), data, static_cast<const uint8_t*>(data) + bias_offset, dtype, N, K, bits, group};
  }

  // docs/model.md section 5 (MLX): code k of row n sits in word (n * K + k) * bits / 32 at bit
  // (k * bits) % 32; w = scale * code + bias with the group's scale and bias.
  double weight(int64_t n, int64_t k) const {
    const int64_t K = view.cols, bits = view.bits, i = n * (K / view.group_size) + k / view.group_size;
    const int64_t bit = (n * K + k) * bits;
    const uint32_t code = (codes[static_cast<size_t>(bit / 32)] >> (bit % 32)) & ((1u << bits) - 1);
    return number(view.scales, i) * code + number(view.biases, i);
  }

  double number(const void* data, int64_t i) const {
    if (view.scale_dtype == DType::F32) return static_cast<const float*>(data)[i];
    const uint16_t h = static_cast<const uint16_t*>(data)[i];
    return view.scale_dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
  }
};

// Activations x [M, K] (row stride ldx) whose groups differ in magnitude by up to 2^16: each
// group gets its own split on the VNNI path.
std::vector<float> spread_activations(Random& rng, int64_t M, int64_t K, int64_t ldx, int group) {
  std::vector<float> x = rng.uniform(static_cast<size_t>(M * ldx));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < K / group; ++g) {
      const float magnitude = std::ldexp(1.0f, static_cast<int>(rng.integer(-8, 8)));
      for (int64_t k = g * group; k < (g + 1) * group; ++k) x[static_cast<size_t>(m * ldx + k)] *= magnitude;
    }
  return x;
}

// sum_k x[m * ldx + k] W[n, k] in double for the M x N outputs, and the tolerance of f32 sums of
// those products relative to the result's norm (kToleranceOfAbsSum of sum |x| |w|).
struct QuantReference {
  std::vector<double> y;
  double tolerance;
};
QuantReference quant_reference(const RandomQuantWeights& w, const std::vector<float>& x, int64_t M, int64_t ldx) {
  const int64_t N = w.view.rows, K = w.view.cols;
  QuantReference r{std::vector<double>(static_cast<size_t>(M * N)), 0.0};
  double ref_norm = 0, abs_norm = 0;
  std::vector<double> row(static_cast<size_t>(K));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) row[static_cast<size_t>(k)] = w.weight(n, k);
    for (int64_t m = 0; m < M; ++m) {
      double sum = 0, abs_sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double p = static_cast<double>(x[static_cast<size_t>(m * ldx + k)]) * row[static_cast<size_t>(k)];
        sum += p;
        abs_sum += std::abs(p);
      }
      r.y[static_cast<size_t>(m * N + n)] = sum;
      ref_norm += sum * sum;
      abs_norm += abs_sum * abs_sum;
    }
  }
  r.tolerance = kToleranceOfAbsSum * std::sqrt(abs_norm / ref_norm);
  return r;
}

// Every path at every M <= kQuantGemvMaxRows, 1 and 2 threads (bit-identical), against the
// double reference within the tolerance of the f32 sums.
void expect_paths_match_reference(Random& rng, ThreadPool& pool, DType dtype, int64_t N, int64_t K, int bits,
                                  int group, int64_t M) {
  const int64_t ldx = K + 3, ldy = N + 5;
  const RandomQuantWeights w(rng, dtype, N, K, bits, group);
  const std::vector<float> x = spread_activations(rng, M, K, ldx, group);
  const QuantReference ref = quant_reference(w, x, M, ldx);
  for (QuantGemvPath path : quant_gemv_paths()) {
    std::vector<float> results[2];
    for (int t = 0; t < 2; ++t) {
      std::vector<float> y(static_cast<size_t>(M * ldy), std::numeric_limits<float>::quiet_NaN());
      quant_gemv(path, t ? &pool : nullptr, M, x.data(), ldx, w.view, y.data(), ldy);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) results[t].push_back(y[static_cast<size_t>(m * ldy + n)]);
    }
    const std::string what = cat(quant_gemv_path_name(path), " ", bits, "-bit g", group, " ", dtype_name(dtype),
                                 " M=", M, " N=", N, " K=", K);
    EXPECT_TRUE(all_finite(results[0])) << what << ": some output is not finite (unwritten?)";
    EXPECT_LE(relative_error(results[0], ref.y), ref.tolerance) << what;
    EXPECT_TRUE(results[0] == results[1]) << what << ": 1 and 2 threads differ";
  }
}

TEST(QuantGemv, EveryPathMatchesMlxFormulaOnCodes) {
  Random rng(test_seed());
  ThreadPool two(2);
  struct Shape {
    int64_t N;
    int groups;
  };
  // Odd groups leave the last 4-bit g64 step of the VNNI kernel half full; N = 70 and 33 leave
  // rows past its 4-row tiles.
  const std::vector<Shape> shapes{{1, 1}, {3, 3}, {7, 2}, {33, 5}, {70, 1}};
  for (int bits : {4, 8})
    for (int group : {32, 64, 128})
      for (DType dtype : {DType::BF16, DType::F16, DType::F32})
        for (const Shape& shape : shapes)
          for (int64_t M = 1; M <= kQuantGemvMaxRows; ++M)
            expect_paths_match_reference(rng, two, dtype, shape.N, shape.groups * group, bits, group, M);
}

// Rows of 7 KB and more than one L2 block per thread, as in the model's down projection.
TEST(QuantGemv, EveryPathMatchesMlxFormulaOnCodesAtModelWidth) {
  Random rng(test_seed());
  ThreadPool two(2);
  for (int bits : {4, 8})
    for (int64_t M : {1, 3, 8}) expect_paths_match_reference(rng, two, DType::BF16, 301, 14336, bits, 64, M);
}

// The integer paths' accumulators at their bound: every code the largest, every activation of a
// group equal (sign per group at random) and as large as its split allows, so each i32 lane sums
// its largest possible products (cpu_quant_avx2_int.cpp and cpu_quant_vnni.cpp state the
// bounds); an overflow would be off by 2^32 somewhere, not by rounding.
TEST(QuantGemv, EveryPathHoldsItsLargestSums) {
  Random rng(test_seed());
  const int64_t N = 5, M = 2;
  for (int bits : {4, 8})
    for (int group : {32, 64, 128}) {
      const int64_t K = 3 * group;
      RandomQuantWeights w(rng, DType::F32, N, K, bits, group);
      std::fill(w.codes.begin(), w.codes.end(), 0xFFFFFFFFu);
      const int64_t groups = N * (K / group);
      std::fill(w.floats.begin(), w.floats.begin() + groups, 1.0f);  // scales; biases 0
      std::fill(w.floats.begin() + groups, w.floats.end(), 0.0f);
      // Just below 127 x 2^e for the e the split picks: |h| reaches 127 and the rounded integer
      // its largest magnitude.
      const float largest = std::nextafter(127.0f / 128.0f, 0.0f);
      std::vector<float> x(static_cast<size_t>(M * K));
      for (int64_t g = 0; g < M * K / group; ++g) {
        const float v = (rng.integer(0, 1) ? largest : -largest) * std::ldexp(1.0f, static_cast<int>(rng.integer(-4, 4)));
        std::fill(x.begin() + g * group, x.begin() + (g + 1) * group, v);
      }
      const double code = (1 << bits) - 1;
      for (QuantGemvPath path : quant_gemv_paths()) {
        std::vector<float> y(static_cast<size_t>(M * N), std::numeric_limits<float>::quiet_NaN());
        quant_gemv(path, nullptr, M, x.data(), K, w.view, y.data(), N);
        for (int64_t m = 0; m < M; ++m) {
          double ref = 0;
          for (int64_t k = 0; k < K; ++k) ref += code * x[static_cast<size_t>(m * K + k)];
          for (int64_t n = 0; n < N; ++n)
            EXPECT_NEAR(y[static_cast<size_t>(m * N + n)], ref, 1e-6 * code * K * 8)
                << quant_gemv_path_name(path) << " " << bits << "-bit g" << group << " m=" << m << " n=" << n;
        }
      }
    }
}

// The AVX-VNNI path adds the same integer sums as the AVX2 integer one, so its results are those
// bit for bit: every group size and scale dtype, tails of rows past whole tiles, 1..8 activation
// rows, one thread and two.
TEST(QuantGemv, AvxVnniGivesTheAvx2IntegerPathsBits) {
  if (!cpu::quant_avx_vnni_supported()) GTEST_SKIP() << "this CPU has no AVX-VNNI";
  Random rng(test_seed());
  ThreadPool pool(2);
  for (int group : {32, 64, 128})
    for (DType dtype : {DType::BF16, DType::F16, DType::F32})
      for (const int64_t M : {int64_t{1}, int64_t{3}, kQuantGemvMaxRows}) {
        const int64_t N = rng.integer(1, 67), K = group * rng.integer(1, 9), ldx = K + 3, ldy = N + 5;
        const RandomQuantWeights w(rng, dtype, N, K, 4, group);
        const std::vector<float> x = spread_activations(rng, M, K, ldx, group);
        for (ThreadPool* threads : {static_cast<ThreadPool*>(nullptr), &pool}) {
          std::vector<float> y[2];
          for (int v = 0; v < 2; ++v) {
            y[v].assign(static_cast<size_t>(M * ldy), std::numeric_limits<float>::quiet_NaN());
            quant_gemv(v ? QuantGemvPath::avx_vnni : QuantGemvPath::avx2_int, threads, M, x.data(), ldx, w.view,
                       y[v].data(), ldy);
          }
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
              const size_t i = static_cast<size_t>(m * ldy + n);
              ASSERT_EQ(std::memcmp(&y[0][i], &y[1][i], sizeof(float)), 0)
                  << "g" << group << " " << dtype_name(dtype) << " M=" << M << " N=" << N << " K=" << K << " m=" << m
                  << " n=" << n << ": avx2-int " << y[0][i] << ", avx-vnni " << y[1][i];
            }
        }
      }
}

// The AMX-INT8 prefill GEMM against the MLX formula in double, at row counts on either side of
// its 16-row tiles, weight rows past whole tiles and panels, every group size, scale dtype and
// width, strided x and y (y's gap columns stay unwritten), 1 and 2 threads bit-identical.
TEST(QuantAmx, MatchesMlxFormulaOnCodesAtPrefillRows) {
  if (!cpu::quant_amx_supported()) GTEST_SKIP() << "this CPU (or kernel) runs no AMX-INT8 tiles";
  Random rng(test_seed());
  ThreadPool pool(2);
  struct Shape {
    int64_t M, N, groups;
  };
  const std::vector<Shape> shapes{{9, 16, 1}, {16, 7, 3}, {17, 70, 2}, {40, 130, 5}, {530, 18, 1}};  // 530: two passes
  for (int bits : {4, 8})
    for (int group : {32, 64, 128})
      for (DType dtype : {DType::BF16, DType::F16, DType::F32})
        for (const Shape& s : shapes) {
          const int64_t K = s.groups * group, ldx = K + 3, ldy = s.N + 5;
          const RandomQuantWeights w(rng, dtype, s.N, K, bits, group);
          const std::vector<float> x = spread_activations(rng, s.M, K, ldx, group);
          const QuantReference ref = quant_reference(w, x, s.M, ldx);
          const std::string what = cat("amx ", bits, "-bit g", group, " ", dtype_name(dtype), " M=", s.M, " N=", s.N,
                                       " K=", K);
          std::vector<float> results[2];
          for (int t = 0; t < 2; ++t) {
            std::vector<float> y(static_cast<size_t>(s.M * ldy), std::numeric_limits<float>::quiet_NaN());
            ASSERT_TRUE(cpu::quant_matmul_amx(t ? &pool : nullptr, s.M, x.data(), ldx, w.view, y.data(), ldy)) << what;
            for (int64_t m = 0; m < s.M; ++m) {
              for (int64_t n = 0; n < s.N; ++n) results[t].push_back(y[static_cast<size_t>(m * ldy + n)]);
              for (int64_t n = s.N; n < ldy; ++n)
                ASSERT_TRUE(std::isnan(y[static_cast<size_t>(m * ldy + n)])) << what << ": wrote past N in row " << m;
            }
          }
          EXPECT_TRUE(all_finite(results[0])) << what << ": some output is not finite (unwritten?)";
          EXPECT_LE(relative_error(results[0], ref.y), ref.tolerance) << what;
          EXPECT_TRUE(results[0] == results[1]) << what << ": 1 and 2 threads differ";
        }
  // An activation the integer split cannot carry: refused, nothing written (the caller then
  // takes the dense path, which propagates it).
  const RandomQuantWeights w(rng, DType::BF16, 20, 128, 4, 64);
  std::vector<float> x = rng.uniform(static_cast<size_t>(10 * 128));
  x[5 * 128 + 77] = std::numeric_limits<float>::infinity();
  std::vector<float> y(static_cast<size_t>(10 * 20), 7.0f);
  EXPECT_FALSE(cpu::quant_matmul_amx(&pool, 10, x.data(), 128, w.view, y.data(), 20));
  EXPECT_TRUE(std::all_of(y.begin(), y.end(), [](float v) { return v == 7.0f; })) << "wrote before refusing";
}

// An inf or NaN activation reaches the outputs of its row (and only those) on every path.
TEST(QuantGemv, NonFiniteActivationsPropagate) {
  Random rng(test_seed());
  const int64_t N = 9, K = 256, M = 3;
  for (int bits : {4, 8}) {
    const RandomQuantWeights w(rng, DType::BF16, N, K, bits, 64);
    for (float bad : {std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
      std::vector<float> x = rng.uniform(static_cast<size_t>(M * K));
      x[static_cast<size_t>(K + 70)] = bad;
      for (QuantGemvPath path : quant_gemv_paths()) {
        std::vector<float> y(static_cast<size_t>(M * N), 0.0f);
        quant_gemv(path, nullptr, M, x.data(), K, w.view, y.data(), N);
        for (int64_t n = 0; n < N; ++n) {
          EXPECT_TRUE(std::isfinite(y[static_cast<size_t>(n)]) && std::isfinite(y[static_cast<size_t>(2 * N + n)]))
              << quant_gemv_path_name(path) << " " << bits << "-bit: a finite row's output is not finite";
          EXPECT_FALSE(std::isfinite(y[static_cast<size_t>(N + n)]))
              << quant_gemv_path_name(path) << " " << bits << "-bit: " << bad << " did not reach output " << n;
        }
      }
    }
  }
}

// A CPU with AVX2 + FMA lists the AVX2 path, an ARM64 one the NEON path (and the SDOT one where it
// has the dot-product instructions), so the tests above run
// it (and it is not silently dropped from the dispatch).
TEST(QuantGemv, ListsEveryPathThisCpuRuns) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  const std::vector<QuantGemvPath> paths = quant_gemv_paths();
  const auto listed = [&](QuantGemvPath p) { return std::find(paths.begin(), paths.end(), p) != paths.end(); };
  EXPECT_EQ(listed(QuantGemvPath::avx2), __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"));
  EXPECT_EQ(listed(QuantGemvPath::avx2_int), __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"));
  EXPECT_EQ(listed(QuantGemvPath::avx_vnni), __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                                 cpuinfo_lists_flag("avx_vnni"));
  EXPECT_EQ(listed(QuantGemvPath::avx512), __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma"));
#elif defined(__aarch64__) && defined(__linux__)
  const std::vector<QuantGemvPath> paths = quant_gemv_paths();
  EXPECT_EQ(std::find(paths.begin(), paths.end(), QuantGemvPath::neon) != paths.end(),
            (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0);
  EXPECT_EQ(std::find(paths.begin(), paths.end(), QuantGemvPath::neon_dotprod) != paths.end(),
            (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0 && (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0);
#else
  GTEST_SKIP() << "no SIMD quantized path on this architecture";
#endif
}

// Every prefill dequantizer this CPU runs (portable, AVX-512, AVX2, NEON) against scale * code + bias
// in double, for rows r0 .. r1 inside the matrix: each weight is an f32 product then an f32 sum,
// so within two roundings of the exact value.
TEST(QuantDequantize, EveryTwinMatchesMlxFormulaOnCodes) {
  Random rng(test_seed());
  const std::vector<std::pair<const char*, cpu::QuantDequantizeFn>> twins{
      {"portable", dequantize_rows}, {"avx512", cpu::quant_dequantize_avx512()}, {"avx2", cpu::quant_dequantize_avx2()},
      {"neon", cpu::quant_dequantize_neon()}};
  for (int bits : {4, 8})
    for (int group : {32, 64, 128})
      for (DType dtype : {DType::BF16, DType::F16, DType::F32}) {
        const int64_t N = 7, K = 3 * group, r0 = 2, r1 = 6;
        const RandomQuantWeights w(rng, dtype, N, K, bits, group);
        for (const auto& [name, dequantize] : twins) {
          if (!dequantize) continue;
          std::vector<float> out(static_cast<size_t>((r1 - r0) * K), std::numeric_limits<float>::quiet_NaN());
          dequantize(w.view, r0, r1, out.data());
          int64_t wrong = 0;
          for (int64_t r = r0; r < r1; ++r)
            for (int64_t k = 0; k < K; ++k) {
              const int64_t i = r * (K / group) + k / group;
              const double exact = w.weight(r, k), bias = w.number(w.view.biases, i);
              // fl(fl(s q) + b) - (s q + b) = s q d1 + (s q + b) d2 + s q d1 d2 with |d| <= 2^-24.
              const double u = std::ldexp(1.0, -24), bound = u * (std::abs(exact - bias) * (1 + u) + std::abs(exact));
              const float got = out[static_cast<size_t>((r - r0) * K + k)];
              if (!(std::abs(got - exact) <= bound) && wrong++ < 3)
                ADD_FAILURE() << name << " " << bits << "-bit g" << group << " " << dtype_name(dtype) << " row " << r
                              << " col " << k << ": " << got << " vs " << exact;
            }
          EXPECT_EQ(wrong, 0) << name << " " << bits << "-bit g" << group << " " << dtype_name(dtype);
        }
      }
}

// Every dequantized weight lies within a rounding's bound of the original: checks codes,
// packing and scale/bias placement together. MinMax spans [min, max] exactly: half a step.
// Mlx puts the larger-magnitude extreme exactly on the grid and rounds the step count to it
// (|e| = rint(|edge| / s0) <= |edge| / s0 + 1/2, |edge| >= n s0 / 2 for n = 2^bits - 1 steps), so
// the grid can end short of the other extreme by (max - min) - n |s| <= |s|: a whole step there,
// half a step everywhere inside the grid.
TEST(QuantLinear, QuantizationErrorWithinTheRoundingsBound) {
  Random rng(test_seed());
  for (const auto& [rounding, steps] : {std::pair{QuantRounding::MinMax, 0.5f}, std::pair{QuantRounding::Mlx, 1.0f}})
    for (int bits : {4, 8})
      for (int group : {32, 64, 128}) {
        const int64_t N = 5, K = 2 * group;
        const std::vector<float> w = rng.uniform(static_cast<size_t>(N * K), -2.0f, 3.0f);
        const QuantizedMatrix m = quantize_matrix(w.data(), DType::F32, N, K, bits, group, nullptr, "w", rounding);
        std::vector<float> dequantized(static_cast<size_t>(N * K));
        dequantize_rows(m.view(), 0, N, dequantized.data());
        for (int64_t n = 0; n < N; ++n)
          for (int64_t k = 0; k < K; ++k) {
            const float scale = std::abs(load_scale(m.scales.data(), DType::F32, n * (K / group) + k / group));
            const size_t i = static_cast<size_t>(n * K + k);
            EXPECT_LE(std::abs(dequantized[i] - w[i]), steps * scale * (1 + 1e-5f))
                << (rounding == QuantRounding::Mlx ? "mlx" : "minmax") << " " << bits << "-bit g" << group
                << " row " << n << " col " << k;
          }
      }
}

TEST(QuantLinear, RefusesBadFormats) {
  auto w = make_tensor("w", DType::F32, {2, 64}, std::vector<float>(128, 1.0f));
  expect_error([&] { quantize_matrix(w->info.data, DType::F32, 2, 64, 3, 64, nullptr, "w"); }, "bits 3");
  expect_error([&] { quantize_matrix(w->info.data, DType::F32, 2, 64, 4, 16, nullptr, "w"); }, "group size 16");
  expect_error([&] { quantize_matrix(w->info.data, DType::F32, 1, 96, 4, 64, nullptr, "w"); }, "multiple of the group size");
}

}  // namespace
}  // namespace moxin::cpu_test
