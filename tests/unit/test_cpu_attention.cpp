// CPU attention ops against double-precision references: the ViT's bidirectional attention,
// RoPE with the KV-cache write, and causal attention over the paged KV cache (several sequences, random
// non-contiguous block tables, prefill and decode tokens in one batch, GQA 1/4/8).
#include <algorithm>
#include <numeric>

#include "fp8_kv_reference.hpp"
#include "test_cpu_common.hpp"

namespace moxin::cpu_test {
namespace {

// Softmax attention of one query over n keys/values (rows `stride` apart), in double.
void reference_attend(const float* q, const std::vector<const float*>& keys,
                      const std::vector<const float*>& values, int64_t D, double* out) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> s(keys.size());
  double max = -1e300;
  for (size_t j = 0; j < keys.size(); ++j) {
    double d = 0;
    for (int64_t i = 0; i < D; ++i) d += static_cast<double>(q[i]) * keys[j][i];
    s[j] = d * scale;
    max = std::max(max, s[j]);
  }
  double sum = 0;
  for (double& v : s) sum += (v = std::exp(v - max));
  for (int64_t i = 0; i < D; ++i) {
    double acc = 0;
    for (size_t j = 0; j < keys.size(); ++j) acc += s[j] * values[j][i];
    out[i] = acc / sum;
  }
}

// Softmax, exp and the dot products in f32: a few roundings over contexts of <= ~100 keys.
constexpr double kAttentionTolerance = 1e-5;

TEST(CpuVitAttention, MatchesReference) {
  Random rng(test_seed());
  struct Case {
    int B, T, H, D;
  };
  for (const Case& c : {Case{1, 1, 1, 8}, Case{2, 5, 3, 64}, Case{1, 33, 2, 72}, Case{2, 70, 3, 16}}) {
    const int64_t HD = static_cast<int64_t>(c.H) * c.D, rows = static_cast<int64_t>(c.B) * c.T;
    const std::vector<float> qkv = rng.uniform(static_cast<size_t>(rows * 3 * HD), -2.0f, 2.0f);
    std::vector<double> ref(static_cast<size_t>(rows * HD));
    for (int b = 0; b < c.B; ++b)
      for (int h = 0; h < c.H; ++h) {
        std::vector<const float*> keys, values;
        for (int j = 0; j < c.T; ++j) {
          const float* row = qkv.data() + (static_cast<int64_t>(b) * c.T + j) * 3 * HD;
          keys.push_back(row + HD + h * c.D);
          values.push_back(row + 2 * HD + h * c.D);
        }
        for (int i = 0; i < c.T; ++i) {
          const int64_t r = static_cast<int64_t>(b) * c.T + i;
          reference_attend(qkv.data() + r * 3 * HD + h * c.D, keys, values, c.D, ref.data() + r * HD + h * c.D);
        }
      }
    expect_matches(cat("vit_attention B=", c.B, " T=", c.T, " H=", c.H, " D=", c.D), ref, kAttentionTolerance,
                   [&](Backend& be) {
                     Tensor in = be.from_host_f32(qkv.data(), {rows, 3 * HD});
                     Tensor y = poisoned(be, {rows, HD});
                     be.vit_attention(in, c.B, c.T, c.H, c.D, y);
                     return host(be, y);
                   });
  }
  auto backend = create_cpu_backend(1);
  Tensor in = backend->empty({10, 3 * 32}, DType::F32), y = backend->empty({10, 32}, DType::F32);
  expect_error([&] { backend->vit_attention(in, 2, 4, 2, 16, y); }, "[cpu] vit_attention: qkv is [10, 96] but 2 x 4 tokens");
}

// Tokens of several sequences at random positions, their blocks shuffled: q comes back
// rotated, the cache holds the rotated k and the exact v at each token's slot.
TEST(CpuRopeKvWrite, MatchesTransformersRotateHalfAndFillsTheSlots) {
  Random rng(test_seed());
  struct Case {
    int64_t T, q_heads, kv_heads, D, block_size;
    float theta;
  };
  for (const Case& c : {Case{1, 1, 1, 2, 1, 10000.0f}, Case{5, 4, 2, 8, 4, 10000.0f}, Case{33, 3, 1, 64, 16, 1000000.0f},
                        Case{17, 4, 2, 128, 5, 10000.0f}}) {
    const int64_t q_row = c.q_heads * c.D, kv_row = c.kv_heads * c.D, width = q_row + 2 * kv_row;
    // Two sequences; token t sits at a distinct position of sequence t % 2.
    const int64_t max_blocks = (8000 + c.block_size) / c.block_size;
    std::vector<int32_t> seq(static_cast<size_t>(c.T)), pos(static_cast<size_t>(c.T)), rotation(static_cast<size_t>(c.T));
    std::vector<int32_t> tables(static_cast<size_t>(2 * max_blocks));
    std::iota(tables.begin(), tables.end(), 0);
    std::shuffle(tables.begin(), tables.end(), rng.engine());
    for (int64_t t = 0; t < c.T; ++t) {
      seq[t] = static_cast<int32_t>(t % 2);
      pos[t] = static_cast<int32_t>(rng.integer(0, (8000 - c.T) / c.T) * c.T + t);  // distinct per sequence, < 8000
      rotation[t] = static_cast<int32_t>(rng.integer(0, 8000));  // RoPE's positions are the op's input
    }
    rotation[0] = 0;
    const std::vector<float> qkv = rng.uniform(static_cast<size_t>(c.T * width), -3, 3);
    // transformers computes inv_freq = 1 / theta^(arange(0, D, 2) / D) and pos * inv_freq in
    // f32; an angle of thousands of radians keeps that rounding, so the reference does too.
    // The rotation itself is exact here (double cos/sin of that f32 angle).
    const auto rotate = [&](int64_t t, const float* v, double* o) {
      const int64_t half = c.D / 2;
      for (int64_t i = 0; i < half; ++i) {
        const float inv_freq = 1.0f / std::pow(c.theta, static_cast<float>(2 * i) / static_cast<float>(c.D));
        const double angle = static_cast<float>(rotation[t]) * inv_freq;
        o[i] = v[i] * std::cos(angle) - v[i + half] * std::sin(angle);
        o[i + half] = v[i + half] * std::cos(angle) + v[i] * std::sin(angle);
      }
    };
    // Expected: q [T, q_row], then per token its cache slot's k and v rows.
    std::vector<double> ref(static_cast<size_t>(c.T * (q_row + 2 * kv_row)));
    double* k_ref = ref.data() + c.T * q_row;
    for (int64_t t = 0; t < c.T; ++t) {
      const float* row = qkv.data() + t * width;
      for (int64_t h = 0; h < c.q_heads; ++h) rotate(t, row + h * c.D, ref.data() + t * q_row + h * c.D);
      for (int64_t h = 0; h < c.kv_heads; ++h) rotate(t, row + q_row + h * c.D, k_ref + t * 2 * kv_row + h * c.D);
      for (int64_t i = 0; i < kv_row; ++i) k_ref[t * 2 * kv_row + kv_row + i] = row[q_row + kv_row + i];
    }
    expect_matches(cat("rope_kv_write T=", c.T, " Hq=", c.q_heads, " Hkv=", c.kv_heads, " D=", c.D), ref, 1e-6,
                   [&](Backend& be) {
                     KvCacheConfig cfg{2, static_cast<int>(c.kv_heads), static_cast<int>(c.D),
                                       static_cast<int>(c.block_size), static_cast<int>(2 * max_blocks)};
                     auto cache = be.create_kv_cache(cfg);
                     AttentionBatch ab;
                     ab.token_seq = be.from_host_i32(seq.data(), {c.T});
                     ab.token_pos = be.from_host_i32(pos.data(), {c.T});
                     ab.block_tables = be.from_host_i32(tables.data(), {2, max_blocks});
                     ab.max_context = 8000;
                     Tensor in = be.from_host_f32(qkv.data(), {c.T, width});
                     Tensor q = poisoned(be, {c.T, q_row});
                     be.rope_kv_write(in, be.from_host_i32(rotation.data(), {c.T}), c.theta, *cache, 1, ab, q);
                     EXPECT_EQ(host(be, in), qkv) << "qkv must be left as it was";
                     std::vector<float> out = host(be, q);
                     const auto& cpu_cache = dynamic_cast<const cpu::CpuKvCache&>(*cache);
                     for (int64_t t = 0; t < c.T; ++t) {
                       const int64_t slot = tables[seq[t] * max_blocks + pos[t] / c.block_size] * c.block_size +
                                            pos[t] % c.block_size;
                       for (int which = 0; which < 2; ++which)
                         for (int64_t h = 0; h < c.kv_heads; ++h) {
                           // Head-major within the block: row (block * kv_heads + h) * block_size + index.
                           const int64_t r = (slot / c.block_size * c.kv_heads + h) * c.block_size + slot % c.block_size;
                           const float* x = (which == 0 ? cpu_cache.keys(1) : cpu_cache.values(1)) + r * c.D;
                           out.insert(out.end(), x, x + c.D);
                         }
                     }
                     return out;
                   });
  }
  auto backend = create_cpu_backend(1);
  KvCacheConfig cfg{1, 1, 4, 4, 2};
  auto cache = backend->create_kv_cache(cfg);
  const int32_t zeros[2] = {0, 0}, slots[2] = {0, 1}, negative[2] = {0, -1};
  AttentionBatch ab;
  ab.token_seq = backend->from_host_i32(zeros, {2});
  ab.token_pos = backend->from_host_i32(slots, {2});
  ab.block_tables = backend->from_host_i32(zeros, {1, 1});
  ab.max_context = 2;
  Tensor qkv = backend->empty({2, 16}, DType::F32), q = backend->empty({2, 8}, DType::F32);
  Tensor p = backend->from_host_i32(slots, {2});
  backend->rope_kv_write(qkv, p, 10000.0f, *cache, 0, ab, q);
  Tensor narrow = backend->empty({2, 12}, DType::F32);
  expect_error([&] { backend->rope_kv_write(narrow, p, 10000.0f, *cache, 0, ab, q); },
               "[cpu] rope_kv_write: qkv [2, 12], q [2, 8] and positions [2] do not describe the same tokens");
  expect_error([&] { backend->rope_kv_write(qkv, p, 0.0f, *cache, 0, ab, q); }, "theta 0 must be positive");
  expect_error([&] { backend->rope_kv_write(qkv, backend->from_host_i32(negative, {2}), 10000.0f, *cache, 0, ab, q); },
               "[cpu] rope_kv_write: position -1 of token 1 is negative");
  expect_error([&] { backend->rope_kv_write(qkv, p, 10000.0f, *cache, 1, ab, q); },
               "[cpu] rope_kv_write: layer 1 is outside the cache's 1 layers");
  KvCacheConfig odd{1, 1, 5, 4, 2};
  auto odd_cache = backend->create_kv_cache(odd);
  Tensor odd_qkv = backend->empty({2, 20}, DType::F32), odd_q = backend->empty({2, 10}, DType::F32);
  expect_error([&] { backend->rope_kv_write(odd_qkv, p, 10000.0f, *odd_cache, 0, ab, odd_q); }, "head_dim 5 must be even");
}

// A paged cache filled through rope_kv_write in two steps (history, then the batch's own
// tokens; RoPE at position 0 is the identity, so the cache holds k as given) and read by
// paged_attention for a batch that mixes a prefill chunk and decode tokens.
struct PagedCase {
  int kv_heads, group, head_dim, block_size;
};

// fp8: the cache holds E4M3 rows (KvCacheDType::Fp8E4M3); the reference attends over the
// values the independent row reference rounds them to.
void run_paged_case(Random& rng, const PagedCase& pc, bool fp8 = false) {
  const int64_t Hkv = pc.kv_heads, Hq = Hkv * pc.group, D = pc.head_dim, bs = pc.block_size;
  const int64_t row = Hkv * D;
  // Three sequences: a prefill chunk continuing a history, a decode token, a fresh prompt.
  const int64_t len[3] = {rng.integer(8, 40), rng.integer(2, 60), rng.integer(1, 12)};
  const int64_t start[3] = {len[0] - rng.integer(2, 6), len[1] - 1, 0};  // batch = positions start..len-1
  const int64_t max_blocks = (*std::max_element(len, len + 3) + bs - 1) / bs + 1;
  int64_t needed = 0;
  for (int64_t l : len) needed += (l + bs - 1) / bs;
  const int num_blocks = static_cast<int>(needed + 3);
  std::vector<int32_t> physical(static_cast<size_t>(num_blocks));
  std::iota(physical.begin(), physical.end(), 0);
  std::shuffle(physical.begin(), physical.end(), rng.engine());
  std::vector<int32_t> tables(static_cast<size_t>(3 * max_blocks), -1);  // unused entries stay invalid
  size_t next = 0;
  for (int s = 0; s < 3; ++s)
    for (int64_t b = 0; b < (len[s] + bs - 1) / bs; ++b) tables[static_cast<size_t>(s * max_blocks + b)] = physical[next++];

  std::vector<std::vector<float>> keys(3), values(3), ref_keys(3), ref_values(3);
  for (int s = 0; s < 3; ++s) {
    keys[s] = rng.uniform(static_cast<size_t>(len[s] * row), -2, 2);
    values[s] = rng.uniform(static_cast<size_t>(len[s] * row), -2, 2);
    ref_keys[s] = keys[s];
    ref_values[s] = values[s];
    if (!fp8) continue;
    for (int64_t r = 0; r < len[s] * Hkv; ++r) {
      const auto k = test_common::fp8_kv_reference_row(keys[s].data() + r * D, D);
      const auto v = test_common::fp8_kv_reference_row(values[s].data() + r * D, D);
      std::copy(k.values.begin(), k.values.end(), ref_keys[s].begin() + r * D);
      std::copy(v.values.begin(), v.values.end(), ref_values[s].begin() + r * D);
    }
  }
  // Token lists: history (all positions before start, shuffled) and the batch.
  struct Tok {
    int32_t seq, pos;
  };
  std::vector<Tok> history, batch_tokens;
  for (int s = 0; s < 3; ++s) {
    for (int64_t p = 0; p < start[s]; ++p) history.push_back({s, static_cast<int32_t>(p)});
    for (int64_t p = start[s]; p < len[s]; ++p) batch_tokens.push_back({s, static_cast<int32_t>(p)});
  }
  std::shuffle(history.begin(), history.end(), rng.engine());
  std::shuffle(batch_tokens.begin(), batch_tokens.end(), rng.engine());
  const int64_t T = static_cast<int64_t>(batch_tokens.size());
  const std::vector<float> q = rng.uniform(static_cast<size_t>(T * Hq * D), -2, 2);

  std::vector<double> ref(static_cast<size_t>(T * Hq * D));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < Hq; ++h) {
      const Tok tok = batch_tokens[static_cast<size_t>(t)];
      std::vector<const float*> ks, vs;
      for (int64_t p = 0; p <= tok.pos; ++p) {
        ks.push_back(ref_keys[tok.seq].data() + p * row + (h / pc.group) * D);
        vs.push_back(ref_values[tok.seq].data() + p * row + (h / pc.group) * D);
      }
      reference_attend(q.data() + (t * Hq + h) * D, ks, vs, D, ref.data() + (t * Hq + h) * D);
    }

  const auto write = [&](Backend& be, KvCache& cache, int layer, const std::vector<Tok>& toks, bool junk) {
    if (toks.empty()) return;
    const int64_t n = static_cast<int64_t>(toks.size());
    std::vector<int32_t> seq, pos;
    std::vector<float> qkv;  // q | k | v rows; q is not read back
    for (const Tok& tok : toks) {
      seq.push_back(tok.seq);
      pos.push_back(tok.pos);
      const float* kr = keys[tok.seq].data() + tok.pos * row;
      const float* vr = values[tok.seq].data() + tok.pos * row;
      qkv.insert(qkv.end(), static_cast<size_t>(Hq * D), 0.0f);
      for (int64_t i = 0; i < row; ++i) qkv.push_back(junk ? 1e3f : kr[i]);
      for (int64_t i = 0; i < row; ++i) qkv.push_back(junk ? -1e3f : vr[i]);
    }
    AttentionBatch ab;
    ab.token_seq = be.from_host_i32(seq.data(), {n});
    ab.token_pos = be.from_host_i32(pos.data(), {n});
    ab.block_tables = be.from_host_i32(tables.data(), {3, max_blocks});
    ab.max_context = static_cast<int>(*std::max_element(len, len + 3));
    const std::vector<int32_t> unrotated(static_cast<size_t>(n), 0);
    Tensor q = be.empty({n, Hq * D}, DType::F32);
    be.rope_kv_write(be.from_host_f32(qkv.data(), {n, Hq * D + 2 * row}), be.from_host_i32(unrotated.data(), {n}),
                     10000.0f, cache, layer, ab, q);
  };

  expect_matches(cat("paged_attention", fp8 ? " fp8" : "", " Hkv=", Hkv, " group=", pc.group, " D=", D, " block=", bs,
                     " lens=", len[0], ",", len[1], ",", len[2]),
                 ref, kAttentionTolerance, [&](Backend& be) {
                   KvCacheConfig cfg;
                   cfg.layers = 2;
                   cfg.kv_heads = pc.kv_heads;
                   cfg.head_dim = pc.head_dim;
                   cfg.block_size = pc.block_size;
                   cfg.num_blocks = num_blocks;
                   cfg.dtype = fp8 ? KvCacheDType::Fp8E4M3 : KvCacheDType::Auto;
                   auto cache = be.create_kv_cache(cfg);
                   std::vector<Tok> all = history;
                   all.insert(all.end(), batch_tokens.begin(), batch_tokens.end());
                   write(be, *cache, 0, all, true);  // layer 0 holds other values: must not leak
                   write(be, *cache, 1, history, false);
                   write(be, *cache, 1, batch_tokens, false);
                   std::vector<int32_t> seq, pos;
                   for (const Tok& tok : batch_tokens) {
                     seq.push_back(tok.seq);
                     pos.push_back(tok.pos);
                   }
                   AttentionBatch ab;
                   ab.token_seq = be.from_host_i32(seq.data(), {T});
                   ab.token_pos = be.from_host_i32(pos.data(), {T});
                   ab.block_tables = be.from_host_i32(tables.data(), {3, max_blocks});
                   ab.max_context = static_cast<int>(*std::max_element(len, len + 3));
                   Tensor qt = be.from_host_f32(q.data(), {T, Hq * D});
                   Tensor y = poisoned(be, {T, Hq * D});
                   be.paged_attention(qt, *cache, 1, ab, static_cast<int>(Hq), y);
                   return host(be, y);
                 });
}

TEST(CpuPagedAttention, MatchesReferenceForMixedBatches) {
  Random rng(test_seed());
  for (const PagedCase& pc : {PagedCase{2, 1, 64, 16}, PagedCase{2, 4, 128, 5}, PagedCase{1, 8, 72, 1},
                              PagedCase{3, 4, 16, 4}, PagedCase{1, 4, 200, 3}, PagedCase{2, 3, 40, 2},
                              PagedCase{1, 16, 16, 8}})
    run_paged_case(rng, pc);
}

TEST(CpuPagedAttention, Fp8CacheMatchesReferenceOnTheRoundedValues) {
  Random rng(test_seed());
  for (const PagedCase& pc : {PagedCase{2, 4, 128, 16}, PagedCase{1, 8, 72, 1}, PagedCase{3, 4, 16, 4},
                              PagedCase{2, 3, 40, 2}})
    run_paged_case(rng, pc, true);
}

// rope_kv_write into an FP8 cache: each token's K (RoPE at position 0 leaves it exact) and V
// rows hold the nearest E4M3 codes and the row exponent, in the token's own slot.
TEST(CpuRopeKvWrite, Fp8CacheHoldsTheNearestCodes) {
  Random rng(test_seed());
  const int64_t T = 9, q_heads = 4, kv_heads = 2, D = 64, bs = 4, blocks = 8;
  const int64_t kv_row = kv_heads * D, width = q_heads * D + 2 * kv_row;
  std::vector<float> qkv = rng.uniform(static_cast<size_t>(T * width), -3, 3);
  for (int64_t i = 0; i < T * width; i += 7) qkv[i] = std::ldexp(qkv[i], static_cast<int>(rng.integer(-30, 30)));
  std::vector<int32_t> tables(static_cast<size_t>(blocks));
  std::iota(tables.begin(), tables.end(), 0);
  std::shuffle(tables.begin(), tables.end(), rng.engine());
  std::vector<int32_t> seq(static_cast<size_t>(T), 0), pos(static_cast<size_t>(T)), rotation(static_cast<size_t>(T), 0);
  std::iota(pos.begin(), pos.end(), 3);
  for (int threads : {1, 2}) {
    auto be = create_cpu_backend(threads);
    auto cache = be->create_kv_cache({1, static_cast<int>(kv_heads), static_cast<int>(D), static_cast<int>(bs),
                                      static_cast<int>(blocks), KvCacheDType::Fp8E4M3});
    EXPECT_EQ(cache->element(), DType::F8_E4M3);
    EXPECT_DOUBLE_EQ(cache->bytes_per_token(), 2.0 * kv_heads * (D + 1));
    AttentionBatch ab;
    ab.token_seq = be->from_host_i32(seq.data(), {T});
    ab.token_pos = be->from_host_i32(pos.data(), {T});
    ab.block_tables = be->from_host_i32(tables.data(), {1, blocks});
    ab.max_context = 3 + static_cast<int>(T);
    Tensor q = be->empty({T, q_heads * D}, DType::F32);
    be->rope_kv_write(be->from_host_f32(qkv.data(), {T, width}), be->from_host_i32(rotation.data(), {T}), 10000.0f,
                      *cache, 0, ab, q);
    const auto& c = dynamic_cast<const cpu::CpuKvCache&>(*cache);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < kv_heads; ++h) {
        const int64_t r = (tables[pos[t] / bs] * kv_heads + h) * bs + pos[t] % bs;  // head-major in its block
        for (int which = 0; which < 2; ++which) {
          const auto ref = test_common::fp8_kv_reference_row(qkv.data() + t * width + q_heads * D + which * kv_row + h * D, D);
          const cpu::CpuKvCache::Fp8Rows rows = which == 0 ? c.fp8_keys(0) : c.fp8_values(0);
          EXPECT_EQ(rows.exponents[r], ref.exponent) << "token " << t << " head " << h << (which ? " V" : " K");
          EXPECT_EQ(std::vector<uint8_t>(rows.codes + r * D, rows.codes + (r + 1) * D), ref.codes)
              << "token " << t << " head " << h << (which ? " V" : " K");
        }
      }
  }
}

TEST(CpuPagedAttention, RejectsBadBatches) {
  auto backend = create_cpu_backend(1);
  KvCacheConfig cfg;
  cfg.layers = 2;
  cfg.kv_heads = 2;
  cfg.head_dim = 8;
  cfg.block_size = 4;
  cfg.num_blocks = 4;
  auto cache = backend->create_kv_cache(cfg);
  const int32_t seq[2] = {0, 1}, pos[2] = {5, 2};
  const int32_t tables[4] = {3, 1, 0, 9};  // sequence 1's second block is invalid (not used by pos 2)
  AttentionBatch ab;
  ab.token_seq = backend->from_host_i32(seq, {2});
  ab.token_pos = backend->from_host_i32(pos, {2});
  ab.block_tables = backend->from_host_i32(tables, {2, 2});
  ab.max_context = 6;
  std::vector<float> zeros(2 * 64, 0.0f);
  const Tensor qkv = backend->from_host_f32(zeros.data(), {2, 64});
  const Tensor rotation = backend->from_host_i32(pos, {2});
  Tensor q = backend->empty({2, 32}, DType::F32), y = backend->empty({2, 32}, DType::F32);
  const auto write = [&] { backend->rope_kv_write(qkv, rotation, 10000.0f, *cache, 0, ab, q); };
  write();
  backend->paged_attention(q, *cache, 1, ab, 4, y);
  expect_error([&] { backend->paged_attention(q, *cache, 2, ab, 4, y); },
               "[cpu] paged_attention: layer 2 is outside the cache's 2 layers");
  expect_error([&] { backend->paged_attention(q, *cache, 0, ab, 3, y); }, "3 query heads are not a multiple");
  ab.max_context = 5;
  expect_error([&] { backend->paged_attention(q, *cache, 0, ab, 4, y); }, "token 0 at position 5 is past batch.max_context 5");
  ab.max_context = 6;
  const int32_t far[2] = {0, 6};
  ab.token_pos = backend->from_host_i32(far, {2});
  ab.max_context = 7;
  expect_error(write, "[cpu] rope_kv_write: sequence 1 maps block 1 to physical block 9 of a cache with 4");
  const int32_t beyond[2] = {8, 0};
  ab.token_pos = backend->from_host_i32(beyond, {2});
  ab.max_context = 9;
  expect_error(write, "token 0 at position 8 needs block 2 but block_tables has 2 columns");
  ab.token_pos = backend->from_host_i32(pos, {2});
  const int32_t bad_seq[2] = {0, 2};
  ab.token_seq = backend->from_host_i32(bad_seq, {2});
  expect_error(write, "belongs to sequence 2 but block_tables has 2 rows");
  KvCacheConfig empty_cfg;
  expect_error([&] { backend->create_kv_cache(empty_cfg); }, "[cpu] KV cache: layers (0)");
}

}  // namespace
}  // namespace moxin::cpu_test
