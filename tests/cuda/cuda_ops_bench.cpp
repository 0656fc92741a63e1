// Micro-benchmark of the CUDA backend's hot ops at full Moxin-7B shapes, each reported against
// the ceiling measured in the same run (device-to-device copy bandwidth) or as TFLOP/s:
//   GEMV [14336x4096] / [4096x14336] bf16 at M = 1, 8 (own kernel, with a tiling sweep) and
//   M = 32 (cuBLASLt), prefill GEMM M = 1024, decode attention at 1k context (batch 1, 4, 32;
//   split-K in shared-memory tiles and in registers), prefill attention over 1024 tokens, ViT
//   attention, and one whole decoder layer eager vs. replayed from a CUDA graph (also with the
//   shared-memory split-K attention).
// Timing: CUDA events around groups of back-to-back calls after warm-up, median of the groups;
// random (never zero) data; each weight matrix (117 MB) is larger than L2 (50 MB) and two
// copies alternate.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cuda/cuda_backend_impl.hpp"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/quant_gemv_sweep.hpp"
#include "core/bf16.hpp"

namespace moxin::cuda {
namespace {

struct Row {
  std::string what;
  double ms;
  std::string rate;
};
std::vector<Row> table;

// Median over `samples` groups of `calls` back-to-back calls, in ms per call.
double time_ms(cudaStream_t stream, int samples, int calls, const std::function<void(int)>& f) {
  for (int i = 0; i < 3; ++i) f(i);
  cudaEvent_t start, stop;
  MOXIN_CUDA_CHECK(cudaEventCreate(&start));
  MOXIN_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> ms;
  int call = 0;
  for (int s = 0; s < samples; ++s) {
    MOXIN_CUDA_CHECK(cudaEventRecord(start, stream));
    for (int c = 0; c < calls; ++c) f(call++);
    MOXIN_CUDA_CHECK(cudaEventRecord(stop, stream));
    MOXIN_CUDA_CHECK(cudaEventSynchronize(stop));
    float t = 0;
    MOXIN_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
    ms.push_back(double(t) / calls);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

uint64_t rng_state = 0x9e3779b97f4a7c15ull;
float next_uniform() {  // xorshift64*, in [-1, 1)
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return float((rng_state * 0x2545f4914f6cdd1dull) >> 40) / float(1 << 23) - 1.0f;
}

std::vector<float> random_f32(size_t n, float scale) {
  std::vector<float> v(n);
  for (float& x : v) x = scale * next_uniform();
  return v;
}

Linear make_linear(Backend& backend, int64_t out, int64_t in) {
  std::vector<uint8_t> bytes(size_t(out * in) * 2);
  auto* h = reinterpret_cast<uint16_t*>(bytes.data());
  for (int64_t i = 0; i < out * in; ++i) h[i] = f32_to_bf16(0.02f * next_uniform());
  TensorInfo t;
  t.name = "bench";
  t.dtype = DType::BF16;
  t.shape = {out, in};
  t.data = bytes.data();
  t.nbytes = bytes.size();
  LinearWeight w;
  w.weight = &t;
  w.out_features = out;
  w.in_features = in;
  Linear l = backend.prepare_linear(w);
  backend.synchronize();
  return l;
}

// A quantized linear of random codes and bf16 scales/biases (biases near -scale * 2^(bits-1)).
struct QuantBenchWeights {
  std::vector<uint32_t> codes;
  std::vector<uint16_t> scales, biases;
  TensorInfo codes_info, scales_info, biases_info;
};

Linear make_quant_linear(Backend& backend, int64_t out, int64_t in, int bits, int group_size) {
  QuantBenchWeights q;
  q.codes.resize(size_t(out * in * bits / 32));
  for (uint32_t& c : q.codes) {
    next_uniform();
    c = uint32_t(rng_state >> 32);
  }
  const int64_t groups = out * (in / group_size);
  for (int64_t g = 0; g < groups; ++g) {
    const float s = 0.011f + 0.009f * next_uniform();
    q.scales.push_back(f32_to_bf16(s));
    q.biases.push_back(f32_to_bf16(-s * float(1 << (bits - 1))));
  }
  auto info = [](const char* name, DType dtype, std::vector<int64_t> shape, const void* data,
                 size_t bytes) {
    TensorInfo t;
    t.name = name;
    t.dtype = dtype;
    t.shape = std::move(shape);
    t.data = static_cast<const uint8_t*>(data);
    t.nbytes = bytes;
    return t;
  };
  q.codes_info = info("bench", DType::U32, {out, in * bits / 32}, q.codes.data(), q.codes.size() * 4);
  q.scales_info = info("bench.scales", DType::BF16, {out, in / group_size}, q.scales.data(),
                       q.scales.size() * 2);
  q.biases_info = info("bench.biases", DType::BF16, {out, in / group_size}, q.biases.data(),
                       q.biases.size() * 2);
  LinearWeight w;
  w.weight = &q.codes_info;
  w.scales = &q.scales_info;
  w.qbiases = &q.biases_info;
  w.bits = bits;
  w.group_size = group_size;
  w.out_features = out;
  w.in_features = in;
  Linear l = backend.prepare_linear(w);
  backend.synchronize();
  return l;
}

const uint16_t* weight_ptr(const Linear& l) {
  return static_cast<const uint16_t*>(dynamic_cast<const CudaLinear&>(*l.impl).weight.get());
}

double copy_ceiling(CudaBackend& backend) {
  const double gbs = backend.measure_bandwidth_gbps();
  table.push_back({"copy 1 GiB device-to-device (read + write)", 2.0 * (1 << 30) / gbs / 1e6,
                   cat(int(gbs), " GB/s = ceiling")});
  return gbs;
}

std::string pct(double gbs, double ceiling) {
  return cat(int(gbs), " GB/s (", int(100.0 * gbs / ceiling + 0.5), "%)");
}

// Every decode M on every decoder shape (qkv, o, gate|up, down, lm_head): the default path
// beside the CUDA-core GEMV (M <= 8), the skinny GEMM and cuBLASLt, all from f32 x (cuBLASLt's
// rows include the conversion), then from 2 rows on cuBLASLt alone on bf16 x, as the decoder's
// norms write it; the skinny kernel's tilings at M = 1, 8, 32. Three copies of each matrix
// alternate (L2 50 MB).
void bench_linears(CudaBackend& backend, double ceiling) {
  const cudaStream_t stream = backend.stream();
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{6144, 4096}, {4096, 4096}, {28672, 4096},
                             {4096, 14336}, {32064, 4096}}) {
    const Linear w[3] = {make_linear(backend, n, k), make_linear(backend, n, k),
                         make_linear(backend, n, k)};
    const double weight_bytes = double(n) * k * 2;
    for (int m : {1, 2, 4, 8, 16, 32, 64, 128}) {
      const std::vector<float> xs = random_f32(size_t(m) * k, 1.0f);
      const Tensor x = backend.from_host_f32(xs.data(), {m, k});
      Tensor y = backend.empty_act({m, n});
      const double bytes = weight_bytes + double(m) * k * 4 + double(m) * n * 4;
      for (const auto& [path, label] :
           {std::pair{CudaLinearPath::Auto, "default"}, {CudaLinearPath::Gemv, "gemv"},
            {CudaLinearPath::Skinny, "skinny"}, {CudaLinearPath::Lt, "cublasLt"}}) {
        if ((path == CudaLinearPath::Gemv && m > kGemvMaxRows) ||
            (path == CudaLinearPath::Skinny && m > kSkinnyMaxRows))
          continue;
        set_cuda_linear_path(backend, path);
        const double ms = time_ms(stream, 20, 10, [&](int i) { backend.linear(x, w[i % 3], y); });
        table.push_back({cat("linear M=", m, " [", n, "x", k, "] ", label), ms,
                         pct(bytes / ms / 1e6, ceiling)});
      }
      if (m >= 2) {
        Tensor xb = backend.empty({m, k}, DType::BF16);
        activations_to_bf16(x.ptr<float>(), xb.ptr<uint16_t>(), int64_t{m} * k, stream);
        const double bf16_bytes = weight_bytes + double(m) * k * 2 + double(m) * n * 4;
        set_cuda_linear_path(backend, CudaLinearPath::Lt);
        const double ms = time_ms(stream, 20, 10, [&](int i) { backend.linear(xb, w[i % 3], y); });
        table.push_back({cat("linear M=", m, " [", n, "x", k, "] bf16 x cublasLt"), ms,
                         pct(bf16_bytes / ms / 1e6, ceiling)});
      }
      set_cuda_linear_path(backend, CudaLinearPath::Auto);
      if (m == 1 || m == 8 || m == 32)
        for (const auto& [r, u] : {std::pair{1, 1}, {1, 2}, {1, 4}, {2, 1}, {2, 2}}) {
          const double vms = time_ms(stream, 20, 10, [&](int i) {
            skinny_gemm_variant(r, u, x.ptr<float>(), m, weight_ptr(w[i % 3]), nullptr,
                                y.ptr<float>(), int(n), int(k), stream);
          });
          table.push_back({cat("  skinny M=", m, " row tiles=", r, " chunks in flight=", u), vms,
                           pct(bytes / vms / 1e6, ceiling)});
        }
    }
    if (n == 32064 || n == 6144) continue;
    const int m = 1024;
    const std::vector<float> xs = random_f32(size_t(m) * k, 1.0f);
    const Tensor x = backend.from_host_f32(xs.data(), {m, k});
    Tensor y = backend.empty_act({m, n});
    const double ms = time_ms(stream, 10, 5, [&](int i) { backend.linear(x, w[i % 3], y); });
    table.push_back({cat("linear M=1024 [", n, "x", k, "] f32->bf16 + cublasLt"), ms,
                     cat(2.0 * m * n * k / ms / 1e9, " TFLOP/s")});
    Tensor xb = backend.empty({m, k}, DType::BF16);
    const double cms = time_ms(stream, 10, 5, [&](int) {
      activations_to_bf16(x.ptr<float>(), xb.ptr<uint16_t>(), int64_t{m} * k, stream);
    });
    table.push_back({cat("  of which f32->bf16 of x [1024x", k, "]"), cms,
                     pct(6.0 * m * k / cms / 1e6, ceiling)});
  }
}

// A cache with `seqs` sequences of `context` tokens each, K/V random.
struct FilledCache {
  std::unique_ptr<KvCache> cache;
  Tensor tables;
  int max_blocks;
};

FilledCache fill_cache(CudaBackend& backend, int seqs, int context, int kv_heads, int head_dim,
                       KvCacheDType dtype = KvCacheDType::Auto) {
  KvCacheConfig cfg;
  cfg.dtype = dtype;
  cfg.layers = 1;
  cfg.kv_heads = kv_heads;
  cfg.head_dim = head_dim;
  cfg.block_size = 16;
  const int max_blocks = (context + 15) / 16;
  cfg.num_blocks = seqs * max_blocks;
  FilledCache f{backend.create_kv_cache(cfg), Tensor{}, max_blocks};
  std::vector<int32_t> tables(size_t(seqs) * max_blocks);
  for (size_t i = 0; i < tables.size(); ++i) tables[i] = int32_t(i);
  f.tables = backend.from_host_i32(tables.data(), {seqs, max_blocks});
  std::vector<int32_t> seq, pos;
  for (int s = 0; s < seqs; ++s)
    for (int p = 0; p < context; ++p) {
      seq.push_back(s);
      pos.push_back(p);
    }
  const int t = int(seq.size());
  // rope_kv_write needs q columns too: one head's worth, discarded.
  const int width = (1 + 2 * kv_heads) * head_dim;
  const std::vector<float> qkv = random_f32(size_t(t) * width, 1.0f);
  Tensor q = backend.empty_act({t, head_dim});
  AttentionBatch b;
  b.token_seq = backend.from_host_i32(seq.data(), {t});
  b.token_pos = backend.from_host_i32(pos.data(), {t});
  b.block_tables = f.tables;
  b.max_context = context;
  backend.rope_kv_write(backend.from_host_f32(qkv.data(), {t, width}), b.token_pos, 10000.0f,
                        *f.cache, 0, b, q);
  backend.synchronize();
  return f;
}

// Long and mixed contexts (issue #10: up to 32k, mixed lengths): K/V filled with a constant
// pattern (the rates do not depend on the values), the tensor-core kernel at Auto's split count
// and at forced ones.
void bench_long_context_attention(CudaBackend& backend, double ceiling) {
  const cudaStream_t stream = backend.stream();
  const int q_heads = 32, kv_heads = 8, head_dim = 128, block = 16;
  struct Case {
    const char* what;
    std::vector<int> contexts;
  };
  std::vector<Case> cases = {{"batch 1 ctx 32k", {32768}},
                             {"batch 32 ctx 16k", std::vector<int>(32, 16384)},
                             {"batch 32 mixed (one 32k, 31 x 1k)", {32768}}};
  cases.back().contexts.resize(32, 1024);
  for (const Case& c : cases) {
    const int seqs = int(c.contexts.size());
    const int longest = *std::max_element(c.contexts.begin(), c.contexts.end());
    const int max_blocks = (longest + block - 1) / block;
    KvCacheConfig cfg;
    cfg.layers = 1;
    cfg.kv_heads = kv_heads;
    cfg.head_dim = head_dim;
    cfg.block_size = block;
    cfg.num_blocks = seqs * max_blocks;
    const std::unique_ptr<KvCache> cache = backend.create_kv_cache(cfg);
    const PagedLayer layer = dynamic_cast<const CudaKvCache*>(cache.get())->layer(0);
    const size_t cache_bytes = size_t(cfg.num_blocks) * block * kv_heads * head_dim * 2;
    MOXIN_CUDA_CHECK(cudaMemsetAsync(layer.k, 0x3c, cache_bytes, stream));
    MOXIN_CUDA_CHECK(cudaMemsetAsync(layer.v, 0x3c, cache_bytes, stream));
    std::vector<int32_t> tables(size_t(seqs) * max_blocks), seq(seqs), pos(seqs);
    for (size_t i = 0; i < tables.size(); ++i) tables[i] = int32_t(i);
    double bytes = 0;
    for (int s = 0; s < seqs; ++s) {
      seq[s] = s;
      pos[s] = c.contexts[s] - 1;
      bytes += double(c.contexts[s]) * kv_heads * head_dim * 2 * 2;
    }
    AttentionBatch b;
    b.token_seq = backend.from_host_i32(seq.data(), {seqs});
    b.token_pos = backend.from_host_i32(pos.data(), {seqs});
    b.block_tables = backend.from_host_i32(tables.data(), {seqs, max_blocks});
    b.max_context = longest;
    const std::vector<float> qs = random_f32(size_t(seqs) * q_heads * head_dim, 1.0f);
    const Tensor q = backend.from_host_f32(qs.data(), {seqs, q_heads * head_dim});
    Tensor y = backend.empty_act({seqs, q_heads * head_dim});
    const double auto_ms = time_ms(
        stream, 10, 10, [&](int) { backend.paged_attention(q, *cache, 0, b, q_heads, y); });
    table.push_back({cat("decode attention ", c.what, " (Auto, ",
                         backend.attention_splits(seqs, q_heads, kv_heads, head_dim, longest), " splits)"),
                     auto_ms, pct(bytes / auto_ms / 1e6, ceiling)});
    Tensor partial = backend.empty({int64_t{seqs} * q_heads * 64 * (head_dim + 2)}, DType::F32);
    Tensor counters = backend.empty({int64_t{seqs} * kv_heads}, DType::I32);
    MOXIN_CUDA_CHECK(cudaMemsetAsync(counters.data, 0, counters.nbytes(), stream));
    const TokenIndex index{b.token_seq.ptr<int32_t>(), b.token_pos.ptr<int32_t>(),
                           b.block_tables.ptr<int32_t>(), seqs, seqs, max_blocks};
    // A grid of N splits: the kernel deals each token's context to at most ceil(context / 128)
    // of them (kMinPositionsPerSplit), the rest run empty, as in a graph captured for a longer
    // context.
    for (int splits : {1, 2, 4, 8, 16, 32, 64}) {
      const double ms = time_ms(stream, 10, 10, [&](int) {
        paged_attention_mma(q.ptr<float>(), layer, index, q_heads, splits, true, partial.ptr<float>(),
                            counters.ptr<int>(), y.ptr<float>(), stream);
      });
      table.push_back({cat("  decode attention ", c.what, " tensor cores, grid of ", splits, " splits"), ms,
                       pct(bytes / ms / 1e6, ceiling)});
    }
  }
}

void bench_attention(CudaBackend& backend, double ceiling) {
  const cudaStream_t stream = backend.stream();
  const int q_heads = 32, kv_heads = 8, head_dim = 128, context = 1024;
  for (int seqs : {1, 4, 8, 16, 32, 128}) {
    FilledCache f = fill_cache(backend, seqs, context, kv_heads, head_dim);
    std::vector<int32_t> seq(seqs), pos(seqs, context - 1);
    for (int s = 0; s < seqs; ++s) seq[s] = s;
    AttentionBatch b;
    b.token_seq = backend.from_host_i32(seq.data(), {seqs});
    b.token_pos = backend.from_host_i32(pos.data(), {seqs});
    b.block_tables = f.tables;
    b.max_context = context;
    const std::vector<float> qs = random_f32(size_t(seqs) * q_heads * head_dim, 1.0f);
    const Tensor q = backend.from_host_f32(qs.data(), {seqs, q_heads * head_dim});
    Tensor y = backend.empty_act({seqs, q_heads * head_dim});
    const double bytes = double(seqs) * context * kv_heads * head_dim * 2 * 2;
    for (const auto& [path, label] :
         {std::pair{CudaAttentionPath::SplitK, "smem tiles"},
          std::pair{CudaAttentionPath::SplitKWarp, "registers"},
          std::pair{CudaAttentionPath::SplitKCluster, "registers, cluster merge"},
          std::pair{CudaAttentionPath::SplitKTensorCore, "tensor cores"}}) {
      backend.set_attention_path(path);
      const double ms = time_ms(
          stream, 20, 20, [&](int) { backend.paged_attention(q, *f.cache, 0, b, q_heads, y); });
      table.push_back(
          {cat("decode attention batch ", seqs, " ctx 1024 (split-K ", label, ", ",
               backend.attention_splits(seqs, q_heads, kv_heads, head_dim, context), " splits)"),
           ms, pct(bytes / ms / 1e6, ceiling)});
    }
    backend.set_attention_path(CudaAttentionPath::Auto);
    {  // The FP8 cache (issue #11): half the bytes through the same kernel, widened in shared memory.
      FilledCache f8 = fill_cache(backend, seqs, context, kv_heads, head_dim, KvCacheDType::Fp8E4M3);
      const double fp8_bytes = double(seqs) * context * kv_heads * (head_dim + 1) * 2;
      const double ms = time_ms(
          stream, 20, 20, [&](int) { backend.paged_attention(q, *f8.cache, 0, b, q_heads, y); });
      table.push_back({cat("decode attention batch ", seqs, " ctx 1024 (FP8 cache, tensor cores, ",
                           backend.attention_splits(seqs, q_heads, kv_heads, head_dim, context), " splits)"),
                       ms, pct(fp8_bytes / ms / 1e6, ceiling)});
    }
    // Every split count against Auto's: which one a batch wants (tensor-core kernel, cluster
    // merge; global merge beyond a cluster).
    {
      Tensor partial = backend.empty({int64_t{seqs} * q_heads * 16 * (head_dim + 2)}, DType::F32);
      Tensor counters = backend.empty({int64_t{seqs} * kv_heads}, DType::I32);
      MOXIN_CUDA_CHECK(cudaMemsetAsync(counters.data, 0, counters.nbytes(), stream));
      const TokenIndex index{b.token_seq.ptr<int32_t>(), b.token_pos.ptr<int32_t>(),
                             b.block_tables.ptr<int32_t>(), seqs, seqs, f.max_blocks};
      const auto* cache = dynamic_cast<const CudaKvCache*>(f.cache.get());
      for (int splits : {1, 2, 3, 4, 6, 8, 12, 16}) {  // grids, as above
        const double ms = time_ms(stream, 20, 20, [&](int) {
          paged_attention_mma(q.ptr<float>(), cache->layer(0), index, q_heads, splits, true,
                              partial.ptr<float>(), counters.ptr<int>(), y.ptr<float>(), stream);
        });
        table.push_back({cat("  decode attention batch ", seqs, " tensor cores, grid of ", splits, " splits"),
                         ms, pct(bytes / ms / 1e6, ceiling)});
      }
    }
  }
  {  // prefill: 1024 tokens of one sequence
    const int tokens = 1024;
    FilledCache f = fill_cache(backend, 1, tokens, kv_heads, head_dim);
    std::vector<int32_t> seq(tokens, 0), pos(tokens);
    for (int p = 0; p < tokens; ++p) pos[p] = p;
    AttentionBatch b;
    b.token_seq = backend.from_host_i32(seq.data(), {tokens});
    b.token_pos = backend.from_host_i32(pos.data(), {tokens});
    b.block_tables = f.tables;
    b.max_context = tokens;
    const std::vector<float> qs = random_f32(size_t(tokens) * q_heads * head_dim, 1.0f);
    const Tensor q = backend.from_host_f32(qs.data(), {tokens, q_heads * head_dim});
    Tensor y = backend.empty_act({tokens, q_heads * head_dim});
    const double flops = 4.0 * q_heads * head_dim * (double(tokens) * (tokens + 1) / 2);
    for (const auto& [path, label] :
         {std::pair{CudaAttentionPath::TiledF32, "f32 CUDA cores"},
          std::pair{CudaAttentionPath::TiledBf16, "bf16 tensor cores"}}) {
      backend.set_attention_path(path);
      const double ms = time_ms(
          stream, 10, 3, [&](int) { backend.paged_attention(q, *f.cache, 0, b, q_heads, y); });
      table.push_back({cat("prefill attention 1024 tokens (tiled, ", label, ")"), ms,
                       cat(flops / ms / 1e9, " TFLOP/s")});
    }
    backend.set_attention_path(CudaAttentionPath::Auto);
    FilledCache f8 = fill_cache(backend, 1, tokens, kv_heads, head_dim, KvCacheDType::Fp8E4M3);
    const double ms =
        time_ms(stream, 10, 3, [&](int) { backend.paged_attention(q, *f8.cache, 0, b, q_heads, y); });
    table.push_back({"prefill attention 1024 tokens (tiled, bf16 tensor cores, FP8 cache)", ms,
                     cat(flops / ms / 1e9, " TFLOP/s")});
  }
  for (const auto& [tokens, head_dim_vit] : {std::pair{261, 64}, {256, 72}}) {
    const int heads = 16, width = heads * head_dim_vit;
    const std::vector<float> qkv = random_f32(size_t(tokens) * 3 * width, 1.0f);
    const Tensor t = backend.from_host_f32(qkv.data(), {tokens, 3 * width});
    // The same q | k | v as the projection writes it where the attention takes bf16.
    Tensor t_bf16 = backend.empty({tokens, 3 * width}, DType::BF16);
    std::vector<uint16_t> bits(qkv.size());
    for (size_t i = 0; i < qkv.size(); ++i) bits[i] = f32_to_bf16(qkv[i]);
    backend.synchronize();  // as CudaOpsTest::upload_bf16: the copy is on the legacy stream
    MOXIN_CUDA_CHECK(cudaMemcpy(t_bf16.data, bits.data(), bits.size() * 2, cudaMemcpyHostToDevice));
    MOXIN_CUDA_CHECK(cudaDeviceSynchronize());
    Tensor y = backend.empty_act({tokens, width});
    const double flops = 4.0 * heads * head_dim_vit * double(tokens) * tokens;
    for (const auto& [path, input, label] :
         {std::tuple{CudaAttentionPath::TiledF32, &t, "f32"},
          std::tuple{CudaAttentionPath::Auto, &t, "tensor cores, f32 qkv"},
          std::tuple{CudaAttentionPath::Auto, static_cast<const Tensor*>(&t_bf16), "tensor cores, bf16 qkv"}}) {
      backend.set_attention_path(path);
      const double ms = time_ms(stream, 10, 10, [&](int) {
        backend.vit_attention(*input, 1, tokens, heads, head_dim_vit, y);
      });
      table.push_back({cat("vit attention T=", tokens, " H=16 D=", head_dim_vit, " ", label), ms,
                       cat(flops / ms / 1e9, " TFLOP/s")});
    }
    backend.set_attention_path(CudaAttentionPath::Auto);
  }
}

// One Mistral decoder layer at batch `seqs` (1k context), its ops as decoder.cpp issues them: the
// residual steps inside the linears where the backend fuses them (bf16 at one row), RoPE + K/V
// write + attention through rope_paged_attention (one kernel for a decode step), the swiglu in the
// gate|up linear where its kernel takes it. `bits` 4 or 8: the linears quantized (groups of 64),
// else bf16. Timed eager and as a graph, with and without PDL, and (graph, the engine's PDL
// setting) once without each op in turn: the op's marginal cost where it sits, PDL overlap and
// launch gaps included, which ncu's serialized kernel times do not show.
void bench_decoder_layer(CudaBackend& backend, double ceiling, int seqs, int bits = 0) {
  const cudaStream_t stream = backend.stream();
  const int hidden = 4096, q_heads = 32, kv_heads = 8, head_dim = 128, inter = 14336,
            context = 1024;
  const float eps = 1e-5f, theta = 10000.0f;
  const int qkv_width = (q_heads + 2 * kv_heads) * head_dim;
  auto linear = [&](int64_t out, int64_t in) {
    return bits ? make_quant_linear(backend, out, in, bits, 64) : make_linear(backend, out, in);
  };
  const Linear qkv = linear(qkv_width, hidden), o = linear(hidden, q_heads * head_dim),
               gate_up = linear(2 * inter, hidden), down = linear(hidden, inter);
  FilledCache f = fill_cache(backend, seqs, context, kv_heads, head_dim);
  std::vector<int32_t> seq(seqs), pos(seqs, context - 1);
  for (int s = 0; s < seqs; ++s) seq[s] = s;
  AttentionBatch b;
  b.token_seq = backend.from_host_i32(seq.data(), {seqs});
  b.token_pos = backend.from_host_i32(pos.data(), {seqs});
  b.block_tables = f.tables;
  b.max_context = context;
  b.one_token_per_sequence = true;  // one token of each sequence: a decode step
  const std::vector<float> xs = random_f32(size_t(seqs) * hidden, 1.0f),
                           ws = random_f32(hidden, 1.0f);
  Tensor x = backend.from_host_f32(xs.data(), {seqs, hidden});
  const Tensor norm = backend.from_host_f32(ws.data(), {hidden});
  // normed and act in the dtype their linears take (bf16 where cuBLASLt multiplies them).
  Tensor h = backend.empty({seqs, hidden}, backend.linear_input_dtype(qkv, seqs)),
         qkvt = backend.empty_act({seqs, qkv_width}), qt = backend.empty_act({seqs, q_heads * head_dim}),
         attn = backend.empty({seqs, q_heads * head_dim},
                              backend.attention_output_dtype(b, seqs, q_heads, kv_heads, o)),
         out = backend.empty_act({seqs, hidden}), gu = backend.empty_act({seqs, 2 * inter}),
         act = backend.empty({seqs, inter}, backend.linear_input_dtype(down, seqs));
  const bool fused = backend.fuses_rms_norm_into(qkv, seqs) && backend.fuses_rms_norm_into(gate_up, seqs) &&
                     backend.fuses_add_into(o, seqs) && backend.fuses_add_into(down, seqs);
  backend.rms_norm(x, norm, eps, h);  // a layer starts from the previous one's add + norm
  std::vector<std::pair<std::string, std::function<void()>>> ops;
  if (fused) {
    ops = {{"norm+qkv", [&] { backend.rms_norm_linear(x, norm, eps, qkv, h, qkvt); }},
           {"rope+attention", [&] { backend.rope_paged_attention(qkvt, b.token_pos, theta, *f.cache, 0, b, q_heads, qt, attn); }},
           {"o+add", [&] { backend.linear_add(attn, o, out, x); }},
           {"norm+gate|up+swiglu", [&] { backend.rms_norm_linear_swiglu(x, norm, eps, gate_up, h, gu, act); }},
           {"down+add", [&] { backend.linear_add(act, down, out, x); }}};
  } else {
    ops = {{"qkv", [&] { backend.linear(h, qkv, qkvt); }},
           {"rope+attention", [&] { backend.rope_paged_attention(qkvt, b.token_pos, theta, *f.cache, 0, b, q_heads, qt, attn); }},
           {"o", [&] { backend.linear(attn, o, out); }},
           {"add+norm", [&] { backend.add_rms_norm(x, out, norm, eps, h); }},
           {"gate|up+swiglu", [&] { backend.linear_swiglu(h, gate_up, gu, act); }},
           {"down", [&] { backend.linear(act, down, out); }},
           {"add+norm (next layer's)", [&] { backend.add_rms_norm(x, out, norm, eps, h); }}};
  }
  auto layer_without = [&](size_t skipped) {
    return [&, skipped] {
      for (size_t i = 0; i < ops.size(); ++i)
        if (i != skipped) ops[i].second();
    };
  };
  const auto layer = layer_without(ops.size());
  const double weights = double(q_heads + 2 * kv_heads) * head_dim * hidden +
                         double(hidden) * q_heads * head_dim + 3.0 * inter * hidden;
  // bf16, or codes plus a bf16 scale and bias per group of 64
  const double weight_bytes = bits ? weights * bits / 8 + weights / 64 * 4 : 2.0 * weights;
  const double kv_bytes = double(seqs) * context * kv_heads * head_dim * 4;
  const std::string name = cat("decoder layer", bits ? cat(" ", bits, "-bit") : "", " batch ", seqs, " ctx 1k");
  // Also with the shared-memory split-K attention that Auto replaced.
  for (const auto& [path, path_label] : {std::pair{CudaAttentionPath::SplitK, " smem-tile attn"},
                                         std::pair{CudaAttentionPath::Auto, ""}}) {
    for (const bool pdl : {false, true}) {
      backend.set_attention_path(path);
      set_pdl_enabled(pdl);
      const double eager = time_ms(stream, 10, 5, [&](int) { layer(); });
      auto graph = capture_cuda_graph(backend, layer);
      const double replay = time_ms(stream, 10, 5, [&](int) { graph->replay(); });
      for (const auto& [label, ms] : {std::pair{"eager", eager}, std::pair{"graph", replay}}) {
        const double per_token_ms = ms * 36;  // 36 layers, lm_head and embedding excluded
        table.push_back({cat(name, ",", path_label, " ", label, pdl ? "+PDL" : "", " (x36 = ", per_token_ms,
                             " ms/step, ", int(seqs * 1000.0 / per_token_ms), " tok/s)"),
                         ms, pct((weight_bytes + kv_bytes) / ms / 1e6, ceiling)});
      }
      // The engine's launches: PDL for quantized decoders only (launch.cuh).
      if (path != CudaAttentionPath::Auto || pdl != (bits != 0)) continue;
      for (size_t skipped = 0; skipped < ops.size(); ++skipped) {
        auto partial = capture_cuda_graph(backend, layer_without(skipped));
        const double without = time_ms(stream, 10, 5, [&](int) { partial->replay(); });
        table.push_back({cat(name, " graph", pdl ? "+PDL" : "", " without ", ops[skipped].first), without,
                         cat("the op's marginal cost ", 1000.0 * (replay - without), " us")});
      }
    }
  }
  backend.set_attention_path(CudaAttentionPath::Auto);
  set_pdl_enabled(bits != 0);
}


// The tensor-core quantized kernel's K phasings (quant_mma_variant) at the decoder's shapes, 4
// and 8 bits g64, M = 4..32, against the copy ceiling in bytes of codes, scales and biases plus
// activations in and out; copies of each matrix as in bench_quant_linears.
void bench_quant_mma_variants(CudaBackend& backend, double ceiling) {
  const cudaStream_t stream = backend.stream();
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{28672, 4096}, {14336, 4096}, {4096, 14336},
                             {6144, 4096}, {4096, 4096}})
    for (int bits : {4, 8}) {
      const double weight_bytes = double(n) * k * bits / 8 + double(n) * (k / 64) * 4;
      const int copies = std::max(3, static_cast<int>(std::ceil(120e6 / weight_bytes)));
      std::vector<Linear> w;
      for (int c = 0; c < copies; ++c) w.push_back(make_quant_linear(backend, n, k, bits, 64));
      const std::vector<float> xs = random_f32(size_t(32) * k, 1.0f);
      for (int m : {4, 8, 16, 32}) {
        const Tensor x = backend.from_host_f32(xs.data(), {m, k});
        Tensor y = backend.empty_act({m, n});
        Tensor scratch = backend.empty({quant_mma_scratch_elems(m, k)}, DType::BF16);
        const double bytes = weight_bytes + 4.0 * m * (k + n);
        const int tiles = (m + 7) / 8;
        for (int phases : {1, 2, 4}) {
          auto run = [&](int i) {
            return quant_mma_variant(tiles, phases, x.ptr<float>(), m,
                                     dynamic_cast<const CudaLinear&>(*w[i % copies].impl).quant,
                                     scratch.ptr<uint16_t>(), y.ptr<float>(), stream);
          };
          if (!run(0)) continue;
          const double ms = time_ms(stream, 20, 10, [&](int i) { run(i); });
          table.push_back({cat("qmma [", n, "x", k, "] ", bits, "-bit g64 M=", m, " K phases=", phases),
                           ms, pct(bytes / ms / 1e6, ceiling)});
        }
      }
    }
}

// Quantized linears (MLX 4/8-bit codes, bf16 scales) at full shapes: M = 1 and 8 (GEMV), 32
// (tensor cores) against the copy ceiling in bytes of codes + scales + biases; M = 1024
// (dequantize + cuBLASLt) against the bf16 linear of the same shape. Copies of each matrix
// (at least three, and 120 MB in all: more than twice the L2) alternate so that none is served
// from L2. Shapes: gate | up's half, down and lm_head, and the small o and q | k | v, whose
// GEMVs run a single partial wave of blocks (session 20's ncu: 32-40% of DRAM at M = 1). At g64 the GEMV tilings are swept: the
// lane-per-word kernel at M = 1 and, for 4 bits, the staged kernel at M = 1 and 2 with the
// lane-per-word one at M = 2 as its same-run baseline.
void bench_quant_linears(CudaBackend& backend, double ceiling) {
  const cudaStream_t stream = backend.stream();
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{14336, 4096}, {4096, 14336}, {32064, 4096},
                             {4096, 4096}, {6144, 4096}}) {
    const int prefill = 1024;
    const std::vector<float> xs = random_f32(size_t(prefill) * k, 1.0f);
    const Tensor x_prefill = backend.from_host_f32(xs.data(), {prefill, k});
    Tensor y_prefill = backend.empty_act({prefill, n});
    double bf16_prefill_ms = 0;
    {
      const Linear w[2] = {make_linear(backend, n, k), make_linear(backend, n, k)};
      bf16_prefill_ms =
          time_ms(stream, 10, 5, [&](int i) { backend.linear(x_prefill, w[i % 2], y_prefill); });
      table.push_back({cat("qlinear M=1024 [", n, "x", k, "] bf16 weights (baseline)"),
                       bf16_prefill_ms, cat(2.0 * prefill * n * k / bf16_prefill_ms / 1e9, " TFLOP/s")});
    }
    for (int bits : {4, 8})
      for (int group_size : {64, 128}) {
        const double weight_bytes = double(n) * k * bits / 8 + double(n) * (k / group_size) * 4;
        const int copies = std::max(3, static_cast<int>(std::ceil(120e6 / weight_bytes)));
        std::vector<Linear> w;
        for (int c = 0; c < copies; ++c) w.push_back(make_quant_linear(backend, n, k, bits, group_size));
        const std::string what = cat("[", n, "x", k, "] ", bits, "-bit g", group_size);
        for (int m : {1, 2, 4, 8, 16, 32, 64}) {
          const Tensor x = backend.from_host_f32(xs.data(), {m, k});
          Tensor y = backend.empty_act({m, n});
          const double ms = time_ms(stream, 20, 10, [&](int i) { backend.linear(x, w[i % copies], y); });
          const double bytes = weight_bytes + double(m) * k * 4 + double(m) * n * 4;
          table.push_back({cat("qlinear M=", m, " ", what, m <= kQuantGemvMaxRows ? " gemv" : " mma"), ms,
                           pct(bytes / ms / 1e6, ceiling)});
        }
        if (group_size == 64 && (n != 32064 || bits == 4)) {
          const Tensor x = backend.from_host_f32(xs.data(), {2, k});
          Tensor y = backend.empty_act({2, n});
          auto quant = [&](int i) -> const QuantMatrix& {
            return dynamic_cast<const CudaLinear&>(*w[i % copies].impl).quant;
          };
          struct Variant {
            int rows, split, min_blocks;
          };
          for (const Variant& v : {Variant{2, 1, 1}, {2, 1, 8}, {2, 2, 8}, {4, 1, 1}, {4, 2, 1}}) {
            const double vms = time_ms(stream, 20, 10, [&](int i) {
              quant_gemv_variant(v.rows, v.split, v.min_blocks, x.ptr<float>(), quant(i),
                                 y.ptr<float>(), stream);
            });
            table.push_back({cat("  qgemv variant M=1 rows/warp=", v.rows, " k-split=", v.split,
                                 " min-blocks/SM=", v.min_blocks),
                             vms, pct((weight_bytes + 4.0 * k + 4.0 * n) / vms / 1e6, ceiling)});
          }
          // 4-bit: the kernel with x staged in shared memory, and the lane-per-word one at M = 2.
          for (int m = 1; bits == 4 && m <= 2; ++m)
            for (bool staged : {true, false})
              for (int rows : {2, 4})
                for (int split : {1, 2}) {
                  if (!quant_gemv4_variant(staged, m, rows, split, x.ptr<float>(), quant(0),
                                           y.ptr<float>(), stream))
                    continue;
                  const double vms = time_ms(stream, 20, 10, [&](int i) {
                    quant_gemv4_variant(staged, m, rows, split, x.ptr<float>(), quant(i),
                                        y.ptr<float>(), stream);
                  });
                  table.push_back({cat("  qgemv4 ", staged ? "staged" : "lane-per-word", " M=", m,
                                       " rows/warp=", rows, " k-split=", split),
                                   vms, pct((weight_bytes + 4.0 * m * (k + n)) / vms / 1e6, ceiling)});
                }
          // The tensor-core kernel at GEMV sizes, to place the crossover.
          for (int m : {2, 4, 8}) {
            const Tensor xm = backend.from_host_f32(xs.data(), {m, k});
            Tensor ym = backend.empty_act({m, n});
            Tensor scratch = backend.empty({quant_mma_scratch_elems(m, k)}, DType::BF16);
            const double vms = time_ms(stream, 20, 10, [&](int i) {
              quant_mma(xm.ptr<float>(), m,
                        dynamic_cast<const CudaLinear&>(*w[i % copies].impl).quant,
                        scratch.ptr<uint16_t>(), ym.ptr<float>(), stream);
            });
            table.push_back({cat("  qmma at M=", m), vms,
                             pct((weight_bytes + 4.0 * m * (k + n)) / vms / 1e6, ceiling)});
          }
        }
        const double ms =
            time_ms(stream, 10, 5, [&](int i) { backend.linear(x_prefill, w[i % copies], y_prefill); });
        table.push_back({cat("qlinear M=1024 ", what, " dequantize + cublasLt"), ms,
                         cat(2.0 * prefill * n * k / ms / 1e9, " TFLOP/s, ",
                             ms / bf16_prefill_ms, "x bf16")});
      }
  }
}

// FP8 E4M3 linears (random finite codes, f32 scale per row) at full shapes: M = 1..8 (GEMV)
// and M = 16..64 (the tensor-core kernel on the codes) against the copy ceiling in bytes of codes +
// scales + x + y, M = 1024 both prefill paths (codes as bf16 + cuBLASLt + column scales; FP8 tensor
// cores on per-token E4M3 activations, the default) against the bf16 linear of the same shape.
// Three copies alternate.
void bench_fp8_linears(CudaBackend& backend, double ceiling) {
  const cudaStream_t stream = backend.stream();
  const bool tensor_cores = backend.fp8_tensor_cores();
  backend.set_fp8_tensor_cores(false);  // the widening path; the tensor cores are timed explicitly
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{14336, 4096}, {4096, 14336}, {32064, 4096}}) {
    std::vector<std::vector<uint8_t>> codes(3, std::vector<uint8_t>(size_t(n * k)));
    for (auto& c : codes)
      for (uint8_t& b : c) {
        next_uniform();
        b = uint8_t(rng_state >> 56) & 0xF7;  // never the NaN pattern S.1111.111
      }
    std::vector<float> scales(static_cast<size_t>(n));
    for (float& s : scales) s = 0.002f + 0.001f * next_uniform();
    Linear w[3];
    for (int i = 0; i < 3; ++i) {
      TensorInfo c{"bench", DType::F8_E4M3, {n, k}, codes[i].data(), codes[i].size(), "<bench>"};
      TensorInfo s{"bench.weight_scale", DType::F32, {n}, reinterpret_cast<const uint8_t*>(scales.data()),
                   scales.size() * 4, "<bench>"};
      LinearWeight lw;
      lw.weight = &c;
      lw.scales = &s;
      lw.out_features = n;
      lw.in_features = k;
      w[i] = backend.prepare_linear(lw);
    }
    const std::vector<float> xs = random_f32(size_t(1024) * k, 1.0f);
    const Linear bf16[2] = {make_linear(backend, n, k), make_linear(backend, n, k)};
    for (int m : {1, 2, 4, 8, 16, 32, 64, 1024}) {
      const Tensor x = backend.from_host_f32(xs.data(), {m, k});
      Tensor y = backend.empty_act({m, n});
      const std::string what = cat("fp8 linear M=", m, " [", n, "x", k, "]");
      const double ms = time_ms(stream, 20, 10, [&](int i) { backend.linear(x, w[i % 3], y); });
      const double bytes = double(n) * k + 4.0 * n + 4.0 * m * (k + n);
      if (m > kFp8GemvMaxRows && m <= kQuantMmaMaxRows) {
        table.push_back({what + " tensor-core kernel on the codes", ms, pct(bytes / ms / 1e6, ceiling)});
      } else if (m <= kFp8GemvMaxRows) {
        table.push_back({what + " gemv", ms, pct(bytes / ms / 1e6, ceiling)});
        for (const auto& [rows, unroll, slices] :
             {std::tuple{2, 2, 1}, {4, 2, 1}, {4, 2, 2}, {4, 2, 4}, {4, 4, 1}, {4, 4, 2}, {8, 2, 1}, {8, 2, 2}}) {
          const auto fp8 = [&](int i) { return dynamic_cast<const CudaLinear&>(*w[i % 3].impl).fp8; };
          if (!fp8_gemv_variant(rows, unroll, slices, x.ptr<float>(), m, fp8(0), y.ptr<float>(), stream)) continue;
          const double vms = time_ms(stream, 20, 10, [&](int i) {
            fp8_gemv_variant(rows, unroll, slices, x.ptr<float>(), m, fp8(i), y.ptr<float>(), stream);
          });
          table.push_back({cat("  fp8 gemv M=", m, " rows/warp=", rows, " steps in flight=", unroll,
                               " K slices=", slices),
                           vms, pct(bytes / vms / 1e6, ceiling)});
        }
      } else {
        const double bf16_ms = time_ms(stream, 10, 5, [&](int i) { backend.linear(x, bf16[i % 2], y); });
        table.push_back({what + " codes as bf16 + cublasLt", ms,
                         cat(2.0 * m * n * k / ms / 1e9, " TFLOP/s, ", ms / bf16_ms, "x bf16 (", bf16_ms, " ms)")});
        backend.set_fp8_tensor_cores(true);
        const double tc_ms = time_ms(stream, 10, 5, [&](int i) { backend.linear(x, w[i % 3], y); });
        backend.set_fp8_tensor_cores(false);
        table.push_back({what + " fp8 tensor cores (per-token x)", tc_ms,
                         cat(2.0 * m * n * k / tc_ms / 1e9, " TFLOP/s, ", tc_ms / bf16_ms, "x bf16, scales ",
                             LtGemm(kGemmWorkspaceBytes).fp8_scales_in_epilogue(m, n, k) ? "in cuBLASLt's epilogue"
                                                                                          : "by a pass")});
        // The parts of the FP8 tensor-core linear beside the GEMM: the activations' per-token
        // quantization and the scale pass over y.
        Tensor codes = backend.empty_act({m, k});  // f32 storage, room for m * k codes
        Tensor token_scales = backend.empty_act({m, 1});
        const double quantize_ms = time_ms(stream, 10, 5, [&](int) {
          quantize_rows_e4m3({x.ptr<float>(), nullptr}, m, static_cast<int>(k), reinterpret_cast<uint8_t*>(codes.ptr<float>()),
                             token_scales.ptr<float>(), stream);
        });
        table.push_back({what + "   of which quantize_rows_e4m3", quantize_ms, ""});
        const auto& fp8w = dynamic_cast<const CudaLinear&>(*w[0].impl).fp8;
        const double scale_ms = time_ms(stream, 10, 5, [&](int) {
          scale_rows_columns(y.ptr<float>(), token_scales.ptr<float>(), fp8w.scales, m, n, stream);
        });
        table.push_back({what + "   a scale pass over y", scale_ms, ""});
      }
    }
  }
  backend.set_fp8_tensor_cores(tensor_cores);
}

}  // namespace
}  // namespace moxin::cuda

int main() {
  using namespace moxin::cuda;
  try {
    auto owned = moxin::create_cuda_backend(0);
    auto& backend = dynamic_cast<CudaBackend&>(*owned);
    std::printf("device: %s\n", backend.name().c_str());
    const double ceiling = copy_ceiling(backend);
    // MOXIN_CUDA_BENCH=quant: the quantized ops only; =qmma: the tensor-core quantized kernel's
    // variants and 4-bit decoder layers at batches 8 and 32; =fp8: the fp8 linears only; =attention:
    // the attention kernels and bf16 decoder layers; =bf16: the bf16 linears as well; =layer: one
    // decoder layer's configuration only (for profilers; MOXIN_BENCH_LAYER below).
    const char* env = std::getenv("MOXIN_CUDA_BENCH");
    const std::string only = env ? env : "";
    const bool all = only.empty();
    if (all || only == "fp8") bench_fp8_linears(backend, ceiling);
    if (only == "qmma") {
      bench_quant_mma_variants(backend, ceiling);
      for (int seqs : {8, 32}) bench_decoder_layer(backend, ceiling, seqs, 4);
    }
    if (all || only == "quant") {
      bench_quant_linears(backend, ceiling);
      for (int bits : {4, 8})
        for (int seqs : {1, 32}) bench_decoder_layer(backend, ceiling, seqs, bits);
    }
    if (all || only == "bf16") bench_linears(backend, ceiling);
    if (only == "layer") {
      // MOXIN_BENCH_LAYER="bits batch" (default "0 1": bf16, one sequence).
      int bits = 0, seqs = 1;
      if (const char* layer = std::getenv("MOXIN_BENCH_LAYER")) std::sscanf(layer, "%d %d", &bits, &seqs);
      bench_decoder_layer(backend, ceiling, seqs, bits);
    }
    if (all || only == "bf16" || only == "attention") {
      bench_attention(backend, ceiling);
      bench_long_context_attention(backend, ceiling);
      for (int seqs : {1, 8, 32, 128}) bench_decoder_layer(backend, ceiling, seqs);
    }
    std::printf("\n%-78s %10s  %s\n", "benchmark", "ms/call", "rate (share of the copy ceiling)");
    for (const Row& r : table)
      std::printf("%-78s %10.4f  %s\n", r.what.c_str(), r.ms, r.rate.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench failed: %s\n", e.what());
    return 1;
  }
  return 0;
}
