// CPU backend benchmarks with their roofline: the read bandwidth and the AVX-512 and AVX2 FMA
// peaks of this machine are measured here too, so every GB/s or FLOP/s can be read as a share.
// Compute-bound rows also report FLOP per second of the process's CPU time ("/cpu-s"): on
// cores shared with other work that rate still reads as a share of the per-core peak.
//
//   cpu_ops_bench --benchmark_counters_tabular=true
//
// Weights are larger than the last-level cache (a 14336 x 4096 bf16 matrix is 117 MB), so a
// GEMV streams them from memory every iteration, as a decode step does.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdlib>
#include <memory>
#include <random>
#include <string_view>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "backend/cpu/cpu_backend_impl.hpp"
#include "backend/cpu/cpu_matmul.hpp"
#include "backend/cpu/cpu_quant_kernels.hpp"
#include "core/bf16.hpp"

namespace moxin {
namespace {

std::unique_ptr<cpu::CpuBackend> make_backend(int threads) {
  return std::make_unique<cpu::CpuBackend>(threads, cpu::best_kernels());
}

// Copies of one random bf16 matrix [rows, cols], enough to span ~1 GB: the benchmark
// cycles through them, so the last-level cache (32 MB) cannot keep any part of the weights
// between iterations, as it cannot between the layers of a real decode step.
struct Weights {
  std::vector<std::vector<uint16_t>> copies;
  std::vector<TensorInfo> infos;
  Weights(int64_t rows, int64_t cols) {
    std::vector<uint16_t> data(static_cast<size_t>(rows * cols));
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> d(-1.0f, 1.0f);
    for (uint16_t& v : data) v = f32_to_bf16(d(rng));
    const size_t count = std::max<size_t>(2, (size_t{1} << 30) / (data.size() * 2));
    copies.assign(count, data);
    for (const auto& c : copies) {
      TensorInfo info;
      info.name = "bench.weight";
      info.dtype = DType::BF16;
      info.shape = {rows, cols};
      info.data = reinterpret_cast<const uint8_t*>(c.data());
      info.nbytes = c.size() * 2;
      infos.push_back(info);
    }
  }
};

Tensor random_activations(Backend& b, int64_t rows, int64_t cols) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(rows * cols));
  for (float& x : v) x = d(rng);
  return b.from_host_f32(v.data(), {rows, cols});
}

// --- ceilings ---

// Every thread streams its share of a 1 GB buffer with the kernels' fastest read (512-bit
// loads and the GEMV's software prefetch on AVX-512): the ceiling for the GEMV.
void BM_ReadBandwidth(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  auto backend = make_backend(threads);
  const int64_t bytes = int64_t{1} << 30;
  std::vector<uint8_t> buffer(static_cast<size_t>(bytes));
  backend->pool().parallel_for(bytes, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) buffer[static_cast<size_t>(i)] = static_cast<uint8_t>(i * 131);
  });
  const cpu::Kernels& kernels = backend->kernels();
  for (auto _ : state)
    backend->pool().parallel_for(bytes / 64, [&](int64_t b, int64_t e) {
      benchmark::DoNotOptimize(kernels.read_stream(buffer.data() + b * 64, (e - b) * 64));
    });
  state.SetBytesProcessed(state.iterations() * bytes);
}
BENCHMARK(BM_ReadBandwidth)->ArgName("threads")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

// Seconds of CPU time used by all threads of this process so far.
double process_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

#if defined(__x86_64__)
// 12 independent FMA chains per thread (enough to cover the FMA latency), lanes x 2 FLOP each.
// Distinct starting values and an empty asm barrier keep the compiler from merging chains. A
// macro, because a function's target ISA cannot be a template parameter (and a template
// called from two target functions would pass vectors across an ABI boundary).
#define MOXIN_FMA_CHAINS(V, set1, fma)                                                            \
  const V m = set1(0.999999f), a = set1(1e-6f);                                                   \
  V c[12];                                                                                        \
  for (int i = 0; i < 12; ++i) c[i] = set1(static_cast<float>(i + 1));                            \
  for (int64_t i = 0; i < iterations; ++i) {                                                      \
    __asm__ volatile("" : "+v"(c[0]), "+v"(c[1]), "+v"(c[2]), "+v"(c[3]), "+v"(c[4]), "+v"(c[5])); \
    __asm__ volatile("" : "+v"(c[6]), "+v"(c[7]), "+v"(c[8]), "+v"(c[9]), "+v"(c[10]), "+v"(c[11])); \
    for (int j = 0; j < 12; ++j) c[j] = fma(c[j], m, a);                                          \
  }                                                                                               \
  float sum = 0;                                                                                  \
  for (int j = 0; j < 12; ++j) sum += reinterpret_cast<const float*>(&c[j])[0];                   \
  return sum;

__attribute__((target("avx512f,fma"))) float fma_chains_avx512(int64_t iterations) {
  MOXIN_FMA_CHAINS(__m512, _mm512_set1_ps, _mm512_fmadd_ps)
}
__attribute__((target("avx2,fma"))) float fma_chains_avx2(int64_t iterations) {
  MOXIN_FMA_CHAINS(__m256, _mm256_set1_ps, _mm256_fmadd_ps)
}
#undef MOXIN_FMA_CHAINS

// args: threads, vector width in bits (512: AVX-512, 256: AVX2 + FMA).
void BM_FmaPeak(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const bool wide = state.range(1) == 512;
  const bool supported = wide ? __builtin_cpu_supports("avx512f") : __builtin_cpu_supports("avx2");
  if (!supported || !__builtin_cpu_supports("fma")) {
    state.SkipWithError("this CPU lacks the ISA");
    return;
  }
  ThreadPool pool(threads);
  constexpr int64_t kIterations = 10'000'000;
  const double flop = static_cast<double>(threads) * kIterations * 12 * (wide ? 32 : 16);
  const double cpu0 = process_cpu_seconds();
  for (auto _ : state)
    pool.parallel_for(threads, [&](int64_t, int64_t) {
      benchmark::DoNotOptimize(wide ? fma_chains_avx512(kIterations) : fma_chains_avx2(kIterations));
    });
  const double cpu_seconds = process_cpu_seconds() - cpu0;
  state.counters["FLOP/s"] = benchmark::Counter(flop, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["FLOP/cpu-s"] = static_cast<double>(state.iterations()) * flop / cpu_seconds;
}
BENCHMARK(BM_FmaPeak)->ArgNames({"threads", "bits"})->ArgsProduct({{1, 2}, {512, 256}})->UseRealTime()->Unit(benchmark::kMillisecond);
#endif

// --- linear ---

// y = x W^T with random bf16 weights W [N, K] and activations x [M, K] on `backend`, cycling
// through copies of W; reports the weight bytes read and FLOP/s (wall clock and per CPU second).
void run_linear(benchmark::State& state, cpu::CpuBackend& backend, int64_t N, int64_t K, int64_t M) {
  Weights w(N, K);
  std::vector<Linear> linears;
  for (const TensorInfo& info : w.infos) {
    LinearWeight lw;
    lw.weight = &info;
    lw.out_features = N;
    lw.in_features = K;
    linears.push_back(backend.prepare_linear(lw));
  }
  Tensor x = random_activations(backend, M, K);
  Tensor y = backend.empty_act({M, N});
  size_t next = 0;
  const double cpu0 = process_cpu_seconds();
  for (auto _ : state) {
    backend.linear(x, linears[next], y);
    next = (next + 1) % linears.size();
    benchmark::DoNotOptimize(y.data);
    benchmark::ClobberMemory();
  }
  const double cpu_seconds = process_cpu_seconds() - cpu0;
  const double flop = 2.0 * static_cast<double>(M * N * K);
  state.SetBytesProcessed(state.iterations() * N * K * 2);  // weight bytes streamed
  state.counters["FLOP/s"] = benchmark::Counter(flop, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["FLOP/cpu-s"] = static_cast<double>(state.iterations()) * flop / cpu_seconds;
  state.SetLabel(backend.kernels().name);
}

// args: out features, in features, rows M, threads
void BM_Linear(benchmark::State& state) {
  auto backend = make_backend(static_cast<int>(state.range(3)));
  run_linear(state, *backend, state.range(0), state.range(1), state.range(2));
}
// Decode: the MLP's up/gate and down projections, one row, 1 and 2 threads.
BENCHMARK(BM_Linear)
    ->ArgNames({"N", "K", "M", "threads"})
    ->Args({14336, 4096, 1, 1})
    ->Args({14336, 4096, 1, 2})
    ->Args({4096, 14336, 1, 1})
    ->Args({4096, 14336, 1, 2})
    ->Args({14336, 4096, 4, 2})   // a few sequences batched
    ->Args({14336, 4096, 32, 2})  // GEMV tiles, compute-bound by now
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
// Prefill / vision: compute-bound GEMMs.
BENCHMARK(BM_Linear)
    ->ArgNames({"N", "K", "M", "threads"})
    ->Args({4096, 4096, 256, 1})
    ->Args({4096, 4096, 256, 2})
    ->Args({4096, 4096, 1024, 2})
    ->Args({14336, 4096, 256, 2})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// The same prefill and vision GEMMs on each kernel table in one process, 2 threads. args: out
// features, in features, rows M, table (0 generic, 1 avx2, 2 avx512, 3 amx, 4 avx512bf16). Compare FLOP/cpu-s with
// BM_FmaPeak's of the same vector width, and with bench/cpu_peer_torch.py run right after.
// The kernel table named by a benchmark argument (0 generic, 1 avx2, 2 avx512, 3 amx, 4 avx512bf16), or null
// with the benchmark skipped when this CPU cannot run it.
const cpu::Kernels* table_arg(benchmark::State& state, int64_t arg) {
  static const char* const kTables[] = {"generic", "avx2", "avx512", "amx", "avx512bf16"};
  for (const cpu::Kernels* k : cpu::supported_kernels())
    if (std::string_view(kTables[arg]) == k->name) return k;
  state.SkipWithError("this CPU lacks the kernel table");
  return nullptr;
}

void BM_Gemm(benchmark::State& state) {
  if (const cpu::Kernels* k = table_arg(state, state.range(3))) {
    cpu::CpuBackend backend(2, *k);
    run_linear(state, backend, state.range(0), state.range(1), state.range(2));
  }
}
BENCHMARK(BM_Gemm)
    ->ArgNames({"N", "K", "M", "table"})
    ->Args({14336, 4096, 256, 2})  // decoder MLP up/gate, prefill of 256 tokens
    ->Args({4096, 14336, 256, 2})  // its down projection
    ->Args({4096, 1024, 257, 2})   // DINOv2-L MLP
    ->Args({4304, 1152, 256, 2})   // SigLIP-SO400M MLP
    ->Args({14336, 4096, 256, 1})
    ->Args({4096, 14336, 256, 1})
    ->Args({4096, 1024, 257, 1})
    ->Args({4304, 1152, 256, 1})
    ->Args({14336, 4096, 256, 3})
    ->Args({4096, 14336, 256, 3})
    ->Args({4096, 1024, 257, 3})
    ->Args({4304, 1152, 256, 3})
    ->Args({14336, 4096, 256, 4})
    ->Args({4096, 14336, 256, 4})
    ->Args({4096, 1024, 257, 4})
    ->Args({4304, 1152, 256, 4})
    ->ArgsProduct({{14336}, {4096}, {1, 2, 4, 5, 8, 16, 32, 64, 128, 129}, {1, 2, 3, 4}})  // either side of each table's gemv_max_rows
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// Decode (one row) on each kernel table in one process: args out features, in features,
// table (0 generic, 1 avx2, 2 avx512, 4 avx512bf16), threads. Reports the GB/s of bf16 weights read (wall
// clock) and its share of the read ceiling measured in the same run with as many threads.
void BM_GemvPath(benchmark::State& state) {
  const cpu::Kernels* k = table_arg(state, state.range(2));
  if (!k) return;
  const int64_t N = state.range(0), K = state.range(1);
  cpu::CpuBackend backend(static_cast<int>(state.range(3)), *k);
  const double ceiling = backend.measure_bandwidth_gbps();
  Weights w(N, K);
  std::vector<float> x(static_cast<size_t>(K)), y(static_cast<size_t>(N));
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  for (float& v : x) v = d(rng);
  size_t next = 0;
  double seconds = 0;
  for (auto _ : state) {
    const cpu::WeightView view{DType::BF16, w.copies[next].data(), N, K, K};
    const auto start = std::chrono::steady_clock::now();
    cpu::matmul(*k, &backend.pool(), 1, x.data(), K, view, nullptr, y.data(), N);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    next = (next + 1) % w.copies.size();
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double gbps = static_cast<double>(state.iterations()) * static_cast<double>(N * K * 2) / seconds / 1e9;
  state.counters["GB/s"] = gbps;
  state.counters["ceiling_GB/s"] = ceiling;
  state.counters["%ceiling"] = 100.0 * gbps / ceiling;
  state.SetLabel(k->name);
}
BENCHMARK(BM_GemvPath)
    ->ArgNames({"N", "K", "table", "threads"})
    ->ArgsProduct({{14336}, {4096}, {0, 1, 2, 4}, {1, 2}})
    ->Args({4096, 14336, 1, 2})
    ->Args({4096, 14336, 2, 2})
    ->Args({4096, 14336, 4, 2})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// --- quantized linear ---

// Copies of one random quantized matrix [rows, cols] (MLX layout, bf16 scales and biases,
// groups of 64) spanning ~1 GB, cycled through as Weights are.
struct QuantWeights {
  struct Copy {
    std::vector<uint32_t> codes;
    std::vector<uint16_t> scales, biases;
    TensorInfo codes_info, scales_info, biases_info;
  };
  static constexpr int kGroup = 64;
  std::vector<std::unique_ptr<Copy>> copies;
  int64_t bytes = 0;  // per copy: codes, scales and biases, what a decode step streams

  // Enough copies to fill 1 GB (each pass reads from memory), or exactly `count` of them.
  QuantWeights(int64_t rows, int64_t cols, int bits, int64_t count = 0) {
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> scale(0.001f, 0.05f), bias(-0.5f, 0.0f);
    auto first = std::make_unique<Copy>();
    first->codes.resize(static_cast<size_t>(rows * cols * bits / 32));
    for (uint32_t& c : first->codes) c = static_cast<uint32_t>(rng());
    const auto groups = static_cast<size_t>(rows * cols / kGroup);
    for (size_t i = 0; i < groups; ++i) {
      first->scales.push_back(f32_to_bf16(scale(rng)));
      first->biases.push_back(f32_to_bf16(bias(rng)));
    }
    bytes = static_cast<int64_t>(first->codes.size() * 4 + groups * 4);
    if (count == 0) count = std::max<int64_t>(2, (int64_t{1} << 30) / bytes);
    for (int64_t i = 0; i < count; ++i) {
      auto c = i == 0 ? std::move(first) : std::make_unique<Copy>(*copies.front());
      c->codes_info = TensorInfo{"bench.weight", DType::U32, {rows, cols * bits / 32},
                                 reinterpret_cast<const uint8_t*>(c->codes.data()), c->codes.size() * 4, "bench"};
      c->scales_info = TensorInfo{"bench.scales", DType::BF16, {rows, cols / kGroup},
                                  reinterpret_cast<const uint8_t*>(c->scales.data()), groups * 2, "bench"};
      c->biases_info = TensorInfo{"bench.biases", DType::BF16, {rows, cols / kGroup},
                                  reinterpret_cast<const uint8_t*>(c->biases.data()), groups * 2, "bench"};
      copies.push_back(std::move(c));
    }
  }
};

// args: out features, in features, rows M, threads, bits (groups of 64). Reports the GB/s of
// codes + scales + biases read and its share of the read ceiling measured in the same run.
void BM_QuantLinear(benchmark::State& state) {
  const int64_t N = state.range(0), K = state.range(1), M = state.range(2);
  const int bits = static_cast<int>(state.range(4));
  auto backend = make_backend(static_cast<int>(state.range(3)));
  const double ceiling = backend->measure_bandwidth_gbps();
  QuantWeights w(N, K, bits);
  std::vector<Linear> linears;
  for (const auto& c : w.copies) {
    LinearWeight lw;
    lw.weight = &c->codes_info;
    lw.scales = &c->scales_info;
    lw.qbiases = &c->biases_info;
    lw.bits = bits;
    lw.group_size = QuantWeights::kGroup;
    lw.out_features = N;
    lw.in_features = K;
    linears.push_back(backend->prepare_linear(lw));
  }
  Tensor x = random_activations(*backend, M, K);
  Tensor y = backend->empty_act({M, N});
  size_t next = 0;
  // Wall-clock seconds for the share of the ceiling (benchmark's own rate counters divide by
  // the main thread's CPU time).
  double seconds = 0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    backend->linear(x, linears[next], y);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    next = (next + 1) % linears.size();
    benchmark::DoNotOptimize(y.data);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * w.bytes);
  // Decimal GB/s, as the ceiling (bytes_per_second prints binary GiB/s).
  const double gbps = static_cast<double>(state.iterations() * w.bytes) / seconds / 1e9;
  state.counters["GB/s"] = gbps;
  state.counters["ceiling_GB/s"] = ceiling;
  state.counters["%ceiling"] = 100.0 * gbps / ceiling;
  const bool amx = std::string_view(backend->kernels().name) == "amx" && cpu::quant_amx_supported();
  // As quant_matmul picks: one GEMV, AMX-INT8 past its rows, else GEMV chunks, then dequantize + GEMM.
  const bool gemv = M <= cpu::kQuantGemvMaxRows || (!amx && M <= cpu::kQuantGemvChunkedMaxRows);
  state.SetLabel(gemv  ? cpu::quant_gemv_path_name(cpu::quant_gemv_path_for(backend->kernels()))
                 : amx ? "amx-int8"
                       : "dequantize+gemm");
}
// Decode (the MLP's up/gate and down projections, 8- and 4-bit), a small batch, a prefill.
BENCHMARK(BM_QuantLinear)
    ->ArgNames({"N", "K", "M", "threads", "bits"})
    ->Args({14336, 4096, 1, 2, 4})
    ->Args({4096, 14336, 1, 2, 4})
    ->Args({14336, 4096, 1, 2, 8})
    ->Args({4096, 14336, 1, 2, 8})
    ->Args({14336, 4096, 1, 1, 4})
    ->Args({14336, 4096, 4, 2, 4})
    ->Args({14336, 4096, 8, 2, 4})   // the GEMV's last row count ...
    ->Args({14336, 4096, 9, 2, 4})   // ... and the prefill path's first (decode batches of the server)
    ->Args({14336, 4096, 16, 2, 4})
    ->Args({14336, 4096, 24, 2, 4})
    ->Args({14336, 4096, 32, 2, 4})
    ->Args({14336, 4096, 256, 2, 4})
    ->Args({14336, 4096, 256, 2, 8})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// The decode GEMV paths side by side in one process (the backend runs the fastest): args out
// features, in features, bits, path (0 generic, 1 avx2, 2 avx2-int, 3 avx512, 4 vnni, 6 avx-vnni),
// threads;
// M = 1.
// Reports GB/s of codes + scales + biases read and its share of the read ceiling measured in
// the same run with as many threads.
// With a sixth arg of 1, one copy of the weights is read over and over: with N small enough
// for the L2 that is the kernel's arithmetic rate, the bound its memory rate cannot pass.
void BM_QuantGemvPath(benchmark::State& state) {
  const int64_t N = state.range(0), K = state.range(1);
  const int bits = static_cast<int>(state.range(2));
  const bool in_cache = state.range(5) != 0;
  const auto path = static_cast<cpu::QuantGemvPath>(state.range(3));
  const std::vector<cpu::QuantGemvPath> paths = cpu::quant_gemv_paths();
  if (std::find(paths.begin(), paths.end(), path) == paths.end()) {
    state.SkipWithError("this CPU lacks the path");
    return;
  }
  auto backend = make_backend(static_cast<int>(state.range(4)));
  const double ceiling = backend->measure_bandwidth_gbps();
  QuantWeights w(N, K, bits, in_cache ? 1 : 0);
  std::vector<float> x(static_cast<size_t>(K)), y(static_cast<size_t>(N));
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  for (float& v : x) v = d(rng);
  size_t next = 0;
  double seconds = 0;  // wall clock, as in BM_QuantLinear
  for (auto _ : state) {
    const QuantWeights::Copy& c = *w.copies[next];
    const QuantView view{c.codes.data(), c.scales.data(), c.biases.data(), DType::BF16, N, K, bits,
                         QuantWeights::kGroup};
    const auto start = std::chrono::steady_clock::now();
    cpu::quant_gemv(path, &backend->pool(), 1, x.data(), K, view, y.data(), N);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    next = (next + 1) % w.copies.size();
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * w.bytes);
  const double gbps = static_cast<double>(state.iterations() * w.bytes) / seconds / 1e9;
  state.counters["GB/s"] = gbps;
  state.counters["ceiling_GB/s"] = ceiling;
  state.counters["%ceiling"] = 100.0 * gbps / ceiling;
  state.SetLabel(cpu::quant_gemv_path_name(path));
}
BENCHMARK(BM_QuantGemvPath)
    ->ArgNames({"N", "K", "bits", "path", "threads", "in_cache"})
    ->ArgsProduct({{14336}, {4096}, {4, 8}, {0, 1, 2, 3, 4, 5, 6, 7}, {1, 2}, {0}})
    ->ArgsProduct({{4096}, {14336}, {4, 8}, {1, 2, 4, 5, 6, 7}, {2}, {0}})  // the down projection's long rows
    ->ArgsProduct({{128}, {4096}, {4, 8}, {0, 1, 2, 3, 4, 5, 6, 7}, {1}, {1}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// --- attention ---

// One decode token per sequence attending to `context` cached positions: Moxin's 32 query
// heads over 8 kv heads of 128. args: context, threads, fp8 (1: the FP8 KV cache).
void BM_PagedAttentionDecode(benchmark::State& state) {
  const int64_t context = state.range(0);
  auto backend = make_backend(static_cast<int>(state.range(1)));
  KvCacheConfig cfg;
  cfg.layers = 1;
  cfg.kv_heads = 8;
  cfg.head_dim = 128;
  cfg.block_size = 16;
  cfg.num_blocks = static_cast<int>((context + 15) / 16);
  cfg.dtype = state.range(2) ? KvCacheDType::Fp8E4M3 : KvCacheDType::Auto;
  auto cache = backend->create_kv_cache(cfg);
  // Fill the whole context through rope_kv_write, blocks in reverse order (non-contiguous).
  std::vector<int32_t> table(static_cast<size_t>(cfg.num_blocks)), seq(static_cast<size_t>(context), 0),
      pos(static_cast<size_t>(context));
  for (int i = 0; i < cfg.num_blocks; ++i) table[static_cast<size_t>(i)] = cfg.num_blocks - 1 - i;
  for (int64_t p = 0; p < context; ++p) pos[static_cast<size_t>(p)] = static_cast<int32_t>(p);
  AttentionBatch all;
  all.token_seq = backend->from_host_i32(seq.data(), {context});
  all.token_pos = backend->from_host_i32(pos.data(), {context});
  all.block_tables = backend->from_host_i32(table.data(), {1, cfg.num_blocks});
  all.max_context = static_cast<int>(context);
  Tensor qkv = random_activations(*backend, context, (32 + 2 * 8) * 128);
  Tensor rotated_q = backend->empty_act({context, 32 * 128});
  backend->rope_kv_write(qkv, all.token_pos, 10000.0f, *cache, 0, all, rotated_q);
  AttentionBatch last;
  const int32_t last_pos = static_cast<int32_t>(context - 1);
  last.token_seq = backend->from_host_i32(seq.data(), {1});
  last.token_pos = backend->from_host_i32(&last_pos, {1});
  last.block_tables = all.block_tables;
  last.max_context = static_cast<int>(context);
  Tensor q = random_activations(*backend, 1, 32 * 128);
  Tensor y = backend->empty_act({1, 32 * 128});
  for (auto _ : state) {
    backend->paged_attention(q, *cache, 0, last, 32, y);
    benchmark::DoNotOptimize(y.data);
  }
  // The cache's own bytes: K and V, with the FP8 rows' exponents.
  state.SetBytesProcessed(static_cast<int64_t>(static_cast<double>(state.iterations()) * static_cast<double>(context) *
                                               cache->bytes_per_token()));
}
BENCHMARK(BM_PagedAttentionDecode)
    ->ArgNames({"context", "threads", "fp8"})
    ->Args({1024, 1, 0})
    ->Args({1024, 2, 0})
    ->Args({1024, 2, 1})
    ->Args({8192, 2, 0})
    ->Args({8192, 2, 1})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// One image through DINOv2's attention: 261 tokens, 16 heads of 64. args: threads.
void BM_VitAttention(benchmark::State& state) {
  auto backend = make_backend(static_cast<int>(state.range(0)));
  constexpr int64_t kTokens = 261, kHeads = 16, kDim = 64;
  Tensor qkv = random_activations(*backend, kTokens, 3 * kHeads * kDim);
  Tensor y = backend->empty_act({kTokens, kHeads * kDim});
  for (auto _ : state) {
    backend->vit_attention(qkv, 1, kTokens, kHeads, kDim, y);
    benchmark::DoNotOptimize(y.data);
  }
  state.counters["FLOP/s"] = benchmark::Counter(4.0 * kTokens * kTokens * kHeads * kDim,  // QK^T and PV
                                                benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_VitAttention)->ArgName("threads")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMicrosecond);

// --- activations ---

// GELU over the DINOv2 MLP activations of one image: 261 tokens x 4096. args: threads.
void BM_GeluErf(benchmark::State& state) {
  auto backend = make_backend(static_cast<int>(state.range(0)));
  Tensor x = random_activations(*backend, 261, 4096);
  Tensor work = backend->empty_act({261, 4096});
  for (auto _ : state) {
    backend->copy_rows(x, work, 0);
    backend->gelu_erf(work, work);
  }
  state.SetItemsProcessed(state.iterations() * x.numel());
}
BENCHMARK(BM_GeluErf)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace moxin

BENCHMARK_MAIN();
