// Attention ops: the ViT's bidirectional attention, RoPE with the KV-cache write, and the
// decoder's causal attention over the paged KV cache. Softmax is two-pass in f32 (max first,
// so exp never overflows).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_backend_impl.hpp"
#include "backend/cpu/cpu_checks.hpp"
#include "backend/cpu/cpu_matmul.hpp"
#include "core/fp8_kv.hpp"
#include "core/rope_frequency.hpp"

namespace moxin::cpu {
namespace {

// Per-thread scratch that grows to the largest request and is then reused.
template <class T>
T* scratch(size_t count) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < count) buffer.resize(count);
  return buffer.data();
}

// The three I32 tensors of an AttentionBatch, checked against T tokens and the cache.
struct BatchView {
  const int32_t* seq = nullptr;
  const int32_t* pos = nullptr;
  const int32_t* tables = nullptr;
  int64_t max_blocks = 0;

  int32_t block(int64_t t, int64_t logical) const { return tables[seq[t] * max_blocks + logical]; }
};

// Every block a token touches must be a valid physical block: all of 0..pos when it reads
// its context, only the one holding pos when it writes.
BatchView check_batch(const AttentionBatch& b, int64_t T, const KvCacheConfig& c, const char* op,
                      bool reads_context) {
  check_dtype(b.token_seq, DType::I32, op, "batch.token_seq");
  check_dtype(b.token_pos, DType::I32, op, "batch.token_pos");
  check_dtype(b.block_tables, DType::I32, op, "batch.block_tables");
  MOXIN_CHECK(b.token_seq.numel() == T && b.token_pos.numel() == T, "[cpu] ", op, ": batch has ",
              b.token_seq.numel(), " token_seq and ", b.token_pos.numel(), " token_pos entries for ", T,
              " tokens");
  MOXIN_CHECK(b.block_tables.shape.size() == 2, "[cpu] ", op, ": batch.block_tables is ",
              b.block_tables.shape_str(), "; expected [sequences, max_blocks]");
  BatchView v{b.token_seq.ptr<int32_t>(), b.token_pos.ptr<int32_t>(), b.block_tables.ptr<int32_t>(),
              b.block_tables.shape[1]};
  const int64_t sequences = b.block_tables.shape[0];
  for (int64_t t = 0; t < T; ++t) {
    const int64_t seq = v.seq[t], pos = v.pos[t];
    MOXIN_CHECK(seq >= 0 && seq < sequences, "[cpu] ", op, ": token ", t, " belongs to sequence ", seq,
                " but block_tables has ", sequences, " rows");
    MOXIN_CHECK(pos >= 0 && pos / c.block_size < v.max_blocks, "[cpu] ", op, ": token ", t,
                " at position ", pos, " needs block ", pos / c.block_size, " but block_tables has ",
                v.max_blocks, " columns");
    MOXIN_CHECK(!reads_context || pos < b.max_context, "[cpu] ", op, ": token ", t, " at position ", pos,
                " is past batch.max_context ", b.max_context, " (it must exceed every position)");
    for (int64_t logical = reads_context ? 0 : pos / c.block_size; logical <= pos / c.block_size; ++logical) {
      const int32_t block = v.block(t, logical);
      MOXIN_CHECK(block >= 0 && block < c.num_blocks, "[cpu] ", op, ": sequence ", seq, " maps block ",
                  logical, " to physical block ", block, " of a cache with ", c.num_blocks);
    }
  }
  return v;
}

// Positions per chunk of attend_fp8: a chunk's K rows, or its V rows as GEMM panels, in f32
// (32 KB at head_dim 128) stay in L1/L2.
constexpr int64_t kFp8Chunk = 64;
// A head's rows are adjacent only within a block, and blocks lie anywhere: each row is
// requested (into L2) this many positions before it is widened.
constexpr int64_t kFp8RowsAhead = 16;
void prefetch_row(const uint8_t* codes, const int64_t* rows, int64_t p, int64_t n, int64_t D) {
  if (p >= n) return;
  for (int64_t byte = 0; byte < D; byte += 64) __builtin_prefetch(codes + rows[p] * D + byte, 0, 2);
}

// Kernels::attend over an FP8 cache (same contract; rows[i] is the cache row of position i).
// The rows are widened to f32 exactly (codes times a power of two) a chunk of positions at a
// time, as the ISA's kernels want them: K rows for the GEMV (scores = q K^T), V rows as the
// GEMM's k-major panels (y += p V). Widening a long context whole would not fit any cache.
// scratch: fp8_attend_scratch(G, n, D) floats.
int64_t fp8_attend_scratch(const Kernels& k, int64_t G, int64_t n, int64_t D) {
  const int64_t panels = (D + k.gemm_nr - 1) / k.gemm_nr;
  return G * n + std::max(kFp8Chunk * D, panels * kFp8Chunk * k.gemm_nr);
}

void attend_fp8(const Kernels& k, const float* q, int64_t G, const CpuKvCache::Fp8Rows& keys,
                const CpuKvCache::Fp8Rows& values, const int64_t* rows, int64_t n, int64_t D, float scale,
                float* scratch, float* y) {
  const int64_t NR = k.gemm_nr, panel_count = (D + NR - 1) / NR;
  float* scores = scratch;
  float* widened = scores + G * n;  // [chunk, D] keys, then panel_count x [chunk, NR] values
  for (int64_t p = 0; p < kFp8RowsAhead; ++p) prefetch_row(keys.codes, rows, p, n, D);
  for (int64_t p0 = 0; p0 < n; p0 += kFp8Chunk) {
    const int64_t c = std::min(kFp8Chunk, n - p0);
    for (int64_t j = 0; j < c; ++j) {
      prefetch_row(keys.codes, rows, p0 + j + kFp8RowsAhead, n, D);
      k.widen_e4m3(keys.codes + rows[p0 + j] * D, D, kv_row_scale(keys.exponents[rows[p0 + j]]), widened + j * D);
    }
    k.gemv(WeightView{DType::F32, widened, c, D, D}, 0, c, q, D, G, nullptr, scores + p0, n);
  }
  for (int64_t g = 0; g < G; ++g) k.softmax(scores + g * n, n, scale);
  for (int64_t p = 0; p < kFp8RowsAhead; ++p) prefetch_row(values.codes, rows, p, n, D);
  for (int64_t p0 = 0; p0 < n; p0 += kFp8Chunk) {
    const int64_t c = std::min(kFp8Chunk, n - p0);
    // Panel b holds columns b * NR .. of the chunk's rows, row j at j * NR (zeros past D).
    for (int64_t j = 0; j < c; ++j) {
      prefetch_row(values.codes, rows, p0 + j + kFp8RowsAhead, n, D);
      const uint8_t* codes = values.codes + rows[p0 + j] * D;
      const float row_scale = kv_row_scale(values.exponents[rows[p0 + j]]);
      for (int64_t b = 0; b < panel_count; ++b) {
        const int64_t width = std::min(NR, D - b * NR);
        float* dst = widened + (b * c + j) * NR;
        k.widen_e4m3(codes + b * NR, width, row_scale, dst);
        std::fill(dst + width, dst + NR, 0.0f);
      }
    }
    for (int64_t g0 = 0; g0 < G; g0 += k.gemm_mr)
      for (int64_t b = 0; b < panel_count; ++b)
        k.gemm_tile(c, scores + g0 * n + p0, n, static_cast<int>(std::min<int64_t>(k.gemm_mr, G - g0)),
                    widened + b * c * NR, static_cast<int>(std::min(NR, D - b * NR)), y + g0 * D + b * NR, D,
                    nullptr, p0 > 0);
  }
}

CpuKvCache& cpu_cache(KvCache& cache, int layer, const char* op) {
  auto* c = dynamic_cast<CpuKvCache*>(&cache);
  MOXIN_CHECK(c != nullptr, "[cpu] ", op, ": the KV cache was not created by the CPU backend");
  MOXIN_CHECK(layer >= 0 && layer < c->config().layers, "[cpu] ", op, ": layer ", layer,
              " is outside the cache's ", c->config().layers, " layers");
  return *c;
}

}  // namespace

void CpuBackend::vit_attention(const Tensor& qkv, int batch, int tokens, int heads, int head_dim,
                               Tensor& y) {
  check_f32(qkv, "vit_attention", "qkv");
  check_f32(y, "vit_attention", "y");
  MOXIN_CHECK(batch > 0 && tokens > 0 && heads > 0 && head_dim > 0, "[cpu] vit_attention: batch (", batch,
              "), tokens (", tokens, "), heads (", heads, ") and head_dim (", head_dim, ") must be positive");
  const int64_t T = tokens, D = head_dim, HD = static_cast<int64_t>(heads) * D, rows = batch * T;
  MOXIN_CHECK(qkv.rows() == rows && qkv.cols() == 3 * HD, "[cpu] vit_attention: qkv is ", qkv.shape_str(),
              " but ", batch, " x ", tokens, " tokens of ", heads, " heads x ", head_dim, " need [", rows,
              ", ", 3 * HD, "]");
  MOXIN_CHECK(y.rows() == rows && y.cols() == HD, "[cpu] vit_attention: y is ", y.shape_str(),
              "; expected [", rows, ", ", HD, "]");
  MOXIN_CHECK(!overlaps(qkv, y), "[cpu] vit_attention: y must not overlap qkv");
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  const float* in = qkv.ptr<float>();
  float* out = y.ptr<float>();
  // One (image, head) per task: scores = q k^T, softmax, then p v through the GEMM.
  pool_.parallel_for_dynamic(static_cast<int64_t>(batch) * heads, 1, [&](int64_t i0, int64_t i1) {
    float* scores = scratch<float>(static_cast<size_t>(T * T + D * T));
    float* v_transposed = scores + T * T;
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t b = item / heads, h = item % heads;
      const float* q = in + b * T * 3 * HD + h * D;
      const float* k = q + HD;
      const float* v = q + 2 * HD;
      matmul(kernels_, nullptr, T, q, 3 * HD, WeightView{DType::F32, k, T, D, 3 * HD}, nullptr, scores, T);
      for (int64_t i = 0; i < T; ++i) kernels_.softmax(scores + i * T, T, scale);
      for (int64_t j = 0; j < T; ++j)
        for (int64_t d = 0; d < D; ++d) v_transposed[d * T + j] = v[j * 3 * HD + d];
      matmul(kernels_, nullptr, T, scores, T, WeightView{DType::F32, v_transposed, D, T, T}, nullptr,
             out + b * T * HD + h * D, HD);
    }
  });
}

void CpuBackend::rope_kv_write(const Tensor& qkv, const Tensor& positions, float theta, KvCache& cache, int layer,
                               const AttentionBatch& batch, Tensor& q) {
  CpuKvCache& c = cpu_cache(cache, layer, "rope_kv_write");
  const KvCacheConfig& cfg = c.config();
  check_f32(qkv, "rope_kv_write", "qkv");
  check_f32(q, "rope_kv_write", "q");
  check_dtype(positions, DType::I32, "rope_kv_write", "positions");
  const int64_t T = qkv.rows(), D = cfg.head_dim, half = D / 2, kv_row = static_cast<int64_t>(cfg.kv_heads) * D;
  MOXIN_CHECK(D % 2 == 0, "[cpu] rope_kv_write: head_dim ", D, " must be even");
  MOXIN_CHECK(theta > 0, "[cpu] rope_kv_write: theta ", theta, " must be positive");
  MOXIN_CHECK(q.rows() == T && q.cols() % D == 0 && qkv.cols() == q.cols() + 2 * kv_row && positions.numel() == T,
              "[cpu] rope_kv_write: qkv ", qkv.shape_str(), ", q ", q.shape_str(), " and positions ",
              positions.shape_str(), " do not describe the same tokens of q heads plus ", cfg.kv_heads,
              " k and v heads of ", D);
  MOXIN_CHECK(!overlaps(qkv, q), "[cpu] rope_kv_write: q must not overlap qkv");
  const int32_t* pos = positions.ptr<int32_t>();
  for (int64_t t = 0; t < T; ++t)
    MOXIN_CHECK(pos[t] >= 0, "[cpu] rope_kv_write: position ", pos[t], " of token ", t, " is negative");
  const BatchView bv = check_batch(batch, T, cfg, "rope_kv_write", false);
  // As transformers computes them, all in f32: angle = pos * inv_freq.
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) inv_freq[i] = rope_inv_freq(theta, i, D);
  const float* in = qkv.ptr<float>();
  float* qs = q.ptr<float>();
  const int64_t q_heads = q.cols() / D, in_row = qkv.cols();
  // Tokens of one batch own distinct cache slots, so threads split tokens.
  pool_.parallel_for(T, [&](int64_t t0, int64_t t1) {
    // cos | sin, then (FP8 caches) the rotated k row before it is rounded.
    float* cs = scratch<float>(static_cast<size_t>(D + kv_row));
    float* sn = cs + half;
    float* rotated = cs + D;
    for (int64_t t = t0; t < t1; ++t) {
      const float p = static_cast<float>(pos[t]);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = p * inv_freq[i];
        cs[i] = std::cos(angle);
        sn[i] = std::sin(angle);
      }
      const float* row = in + t * in_row;
      for (int64_t h = 0; h < q_heads; ++h) kernels_.rope(row + h * D, cs, sn, half, qs + (t * q_heads + h) * D);
      const int64_t block = bv.block(t, bv.pos[t] / cfg.block_size), index = bv.pos[t] % cfg.block_size;
      const float* k = row + q_heads * D;
      const float* v = k + kv_row;
      if (!c.fp8()) {
        for (int64_t h = 0; h < cfg.kv_heads; ++h) {
          const int64_t r = c.row(block, index, h);
          kernels_.rope(k + h * D, cs, sn, half, c.keys(layer) + r * D);
          std::memcpy(c.values(layer) + r * D, v + h * D, static_cast<size_t>(D) * sizeof(float));
        }
        continue;
      }
      for (int64_t h = 0; h < cfg.kv_heads; ++h) kernels_.rope(k + h * D, cs, sn, half, rotated + h * D);
      const CpuKvCache::Fp8Rows keys = c.fp8_keys(layer), values = c.fp8_values(layer);
      for (int64_t h = 0; h < cfg.kv_heads; ++h) {
        const int64_t r = c.row(block, index, h);
        keys.exponents[r] = quantize_kv_row(rotated + h * D, D, keys.codes + r * D);
        values.exponents[r] = quantize_kv_row(v + h * D, D, values.codes + r * D);
      }
    }
  }, 4);
}

void CpuBackend::paged_attention(const Tensor& q, KvCache& cache, int layer, const AttentionBatch& batch,
                                 int q_heads, Tensor& y) {
  CpuKvCache& c = cpu_cache(cache, layer, "paged_attention");
  const KvCacheConfig& cfg = c.config();
  check_f32(q, "paged_attention", "q");
  check_f32(y, "paged_attention", "y");
  const int64_t T = q.rows(), D = cfg.head_dim, kv_heads = cfg.kv_heads, bs = cfg.block_size;
  MOXIN_CHECK(q_heads > 0 && q_heads % kv_heads == 0, "[cpu] paged_attention: ", q_heads,
              " query heads are not a multiple of the cache's ", kv_heads, " kv heads");
  MOXIN_CHECK(q.cols() == q_heads * D, "[cpu] paged_attention: q is ", q.shape_str(), " but ", q_heads,
              " heads of ", D, " need ", q_heads * D, " columns");
  check_same_matrix(q, y, "paged_attention", "q", "y");
  MOXIN_CHECK(!overlaps(q, y), "[cpu] paged_attention: y must not overlap q");
  const BatchView bv = check_batch(batch, T, cfg, "paged_attention", true);
  const int64_t group = q_heads / kv_heads;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  // Tasks are (token, kv head): the GQA group's query heads are consecutive in q and y, and
  // the kernel reads each cached K/V row once for all of them. Contexts differ in length,
  // so threads claim tasks as they go.
  pool_.parallel_for_dynamic(T * kv_heads, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t task = i0; task < i1; ++task) {
      const int64_t t = task / kv_heads, kv = task % kv_heads;
      const int64_t context = bv.pos[t] + 1;
      // The cache row of this kv head at each position of this token's sequence.
      int64_t* rows = scratch<int64_t>(static_cast<size_t>(context));
      for (int64_t p = 0, logical = 0; p < context; ++logical) {
        const int64_t block = bv.block(t, logical);
        for (int64_t index = 0; index < bs && p < context; ++index, ++p) rows[p] = c.row(block, index, kv);
      }
      const int64_t first_head = t * q_heads + kv * group;
      const float* qt = q.ptr<float>() + first_head * D;
      float* yt = y.ptr<float>() + first_head * D;
      if (!c.fp8()) {
        for (int64_t p = 0; p < context; ++p) rows[p] *= D;  // floats, not rows
        kernels_.attend(qt, group, c.keys(layer), c.values(layer), rows, context, D, scale,
                        scratch<float>(static_cast<size_t>(group * context)), yt);
        continue;
      }
      attend_fp8(kernels_, qt, group, c.fp8_keys(layer), c.fp8_values(layer), rows, context, D, scale,
                 scratch<float>(static_cast<size_t>(fp8_attend_scratch(kernels_, group, context, D))), yt);
    }
  });
}

}  // namespace moxin::cpu
