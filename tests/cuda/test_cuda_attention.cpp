// ViT attention, KV-cache writes (rope_kv_write) + paged attention (all kernels: split-K
// decode with shared-memory tiles or in registers, and tiled prefill), and CUDA graph capture,
// against f64 references.
//
// Tolerances (||got - ref|| / ||ref||): attention in f32 (split-K decode, TiledF32) is 1e-5
// against a reference with the same inputs. The KV cache stores K and V as bf16: the reference
// rounds K and V the same way (1e-5); against unrounded K/V the error is the bf16 rounding,
// ~2e-3 (checked below 6e-3 and printed, so the cost of bf16 KV storage is on record). The
// tensor-core kernels (TiledBf16, the default for prefill and ViT) also round Q and the
// softmax probabilities (ViT: K and V too) to bf16: ~3e-3, checked below 8e-3.
// An FP8 cache (E4M3 rows with a power-of-two scale) is checked the same way against a reference
// on the row format's values (fp8_kv_reference.hpp, independent of the kernels), its codes and
// exponents byte for byte; against unrounded K/V the E4M3 rounding (3 mantissa bits: at most
// 2^-4 relative per value) costs ~2-3%, checked below 2^-4 and printed.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <tuple>

#include <cuda_runtime.h>

#include "backend/cuda/cuda_backend.hpp"
#include "backend/cuda/cuda_backend_impl.hpp"
#include "core/check.hpp"
#include "cuda_test_support.hpp"
#include "fp8_kv_reference.hpp"

namespace moxin::cuda_test {
namespace {

constexpr double kF32Tol = 1e-5;
constexpr double kBf16KvTol = 6e-3;
constexpr double kTensorCoreTol = 8e-3;
constexpr double kFp8KvTol = 0.0625;

// A layer's codes or exponents, copied to the host.
template <class T>
std::vector<T> download_bytes(const T* device, size_t n) {
  std::vector<T> host(n);
  EXPECT_EQ(cudaMemcpy(host.data(), device, n, cudaMemcpyDeviceToHost), cudaSuccess);
  return host;
}

using CudaAttention = CudaOpsTest;

// softmax(q k^T * scale) v over `keys` keys for one query row.
void attend(const float* q, const std::vector<const float*>& k, const std::vector<const float*>& v,
            int head_dim, double* out) {
  const double scale = 1.0 / std::sqrt(double(head_dim));
  std::vector<double> s(k.size());
  double mx = -INFINITY;
  for (size_t j = 0; j < k.size(); ++j) {
    double dot = 0;
    for (int d = 0; d < head_dim; ++d) dot += double(q[d]) * k[j][d];
    s[j] = dot * scale;
    mx = std::max(mx, s[j]);
  }
  double sum = 0;
  for (double& x : s) sum += (x = std::exp(x - mx));
  for (int d = 0; d < head_dim; ++d) {
    double acc = 0;
    for (size_t j = 0; j < k.size(); ++j) acc += s[j] * v[j][d];
    out[d] = acc / sum;
  }
}

TEST_F(CudaAttention, VitBidirectional) {
  struct Case {
    int batch, tokens, heads, head_dim;
  };
  // 577 x 64: all ten key tiles staged at once (the most that fit); 729 x 128: too many keys to
  // stage at once, tile by tile.
  for (const Case& c : {Case{1, 1, 1, 16}, Case{2, 5, 3, 18}, Case{1, 33, 2, 64},
                        Case{1, 261, 2, 72}, Case{2, 257, 1, 128}, Case{1, 65, 3, 100},
                        Case{1, 577, 1, 64}, Case{1, 729, 2, 128}}) {
    const int width = c.heads * c.head_dim;
    const int rows = c.batch * c.tokens;
    const std::vector<float> qkv = randn(size_t(rows) * 3 * width);
    std::vector<double> ref(size_t(rows) * width);
    for (int b = 0; b < c.batch; ++b)
      for (int h = 0; h < c.heads; ++h) {
        std::vector<const float*> k, v;
        for (int t = 0; t < c.tokens; ++t) {
          const float* row = qkv.data() + size_t(b * c.tokens + t) * 3 * width;
          k.push_back(row + width + h * c.head_dim);
          v.push_back(row + 2 * width + h * c.head_dim);
        }
        for (int t = 0; t < c.tokens; ++t) {
          const float* q = qkv.data() + size_t(b * c.tokens + t) * 3 * width + h * c.head_dim;
          attend(q, k, v, c.head_dim,
                 ref.data() + size_t(b * c.tokens + t) * width + h * c.head_dim);
        }
      }
    const Tensor input = upload(qkv, {rows, 3 * width});
    const Tensor input_bf16 = upload_bf16(qkv, {rows, 3 * width});
    for (const auto& [path, label, tol] :
         {std::tuple{CudaAttentionPath::TiledF32, "f32", kF32Tol},
          std::tuple{CudaAttentionPath::Auto, "tensor-core", kTensorCoreTol}}) {
      set_cuda_attention_path(backend(), path);
      Tensor y = poisoned({rows, width});
      backend().vit_attention(input, c.batch, c.tokens, c.heads, c.head_dim, y);
      const std::string what =
          cat("vit_attention ", label, " B=", c.batch, " T=", c.tokens, " H=", c.heads, " D=", c.head_dim);
      const std::vector<float> got = download(y);
      expect_close(what, got, ref, tol);
      // A bf16 output (the projection's input) is the f32 output rounded.
      Tensor y_bf16 = backend().empty({rows, width}, DType::BF16);
      backend().vit_attention(input, c.batch, c.tokens, c.heads, c.head_dim, y_bf16);
      const std::vector<float> got_bf16 = download(y_bf16);
      for (size_t i = 0; i < got.size(); ++i)
        ASSERT_EQ(round_bf16(got[i]), got_bf16[i]) << what << ": bf16 output " << i << " is not the f32 one rounded";
      if (path == CudaAttentionPath::TiledF32) {
        try {
          backend().vit_attention(input_bf16, c.batch, c.tokens, c.heads, c.head_dim, y);
          ADD_FAILURE() << what << ": a bf16 qkv was taken by the f32 path";
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("a bf16 qkv needs the tensor-core path"), std::string::npos)
              << e.what();
        }
        continue;
      }
      // A bf16 qkv (as the projection writes it) holds the values the tensor cores take from the
      // f32 one: the same output bits, through the asynchronous copies or the element-wise ones.
      Tensor y_from_bf16 = poisoned({rows, width});
      backend().vit_attention(input_bf16, c.batch, c.tokens, c.heads, c.head_dim, y_from_bf16);
      const std::vector<float> got_from_bf16 = download(y_from_bf16);
      for (size_t i = 0; i < got.size(); ++i)
        ASSERT_EQ(got[i], got_from_bf16[i]) << what << ": output " << i << " from the bf16 qkv differs";
    }
    set_cuda_attention_path(backend(), CudaAttentionPath::Auto);
  }
}

// A paged cache filled with `lengths` tokens per sequence (physical blocks shuffled), then
// queried by several batches through both attention kernels.
class PagedAttention : public CudaOpsTest {
 protected:
  struct Query {
    int seq, pos;
  };

  void run(int q_heads, int kv_heads, int head_dim, const std::vector<int>& lengths,
           const std::vector<std::vector<Query>>& batches, bool fp8 = false) {
    KvCacheConfig cfg;
    cfg.dtype = fp8 ? KvCacheDType::Fp8E4M3 : KvCacheDType::Auto;
    cfg.layers = 2;
    cfg.kv_heads = kv_heads;
    cfg.head_dim = head_dim;
    cfg.block_size = 16;
    int blocks_needed = 0;
    for (int len : lengths) blocks_needed += (len + cfg.block_size - 1) / cfg.block_size;
    cfg.num_blocks = blocks_needed + 3;
    const int seqs = static_cast<int>(lengths.size());
    const int max_blocks =
        (*std::max_element(lengths.begin(), lengths.end()) + cfg.block_size - 1) / cfg.block_size +
        1;
    std::vector<int32_t> physical(cfg.num_blocks);
    std::iota(physical.begin(), physical.end(), 0);
    std::shuffle(physical.begin(), physical.end(), rng_);
    std::vector<int32_t> tables(size_t(seqs) * max_blocks, -1);
    int next = 0;
    for (int s = 0; s < seqs; ++s)
      for (int b = 0; b < (lengths[s] + cfg.block_size - 1) / cfg.block_size; ++b)
        tables[size_t(s) * max_blocks + b] = physical[next++];
    auto cache = backend().create_kv_cache(cfg);
    const int layer = 1;
    const int kv_width = kv_heads * head_dim, q_width = q_heads * head_dim;

    // Write every sequence's K/V in one batch, tokens in a shuffled order.
    std::vector<int32_t> w_seq, w_pos;
    for (int s = 0; s < seqs; ++s)
      for (int p = 0; p < lengths[s]; ++p) {
        w_seq.push_back(s);
        w_pos.push_back(p);
      }
    const int written = static_cast<int>(w_seq.size());
    std::vector<int> order(written);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng_);
    std::vector<int32_t> o_seq(written), o_pos(written);
    for (int i = 0; i < written; ++i) {
      o_seq[i] = w_seq[order[i]];
      o_pos[i] = w_pos[order[i]];
    }
    const std::vector<float> k_all = randn(size_t(written) * kv_width),
                             v_all = randn(size_t(written) * kv_width);
    AttentionBatch wb;
    wb.token_seq = upload_i32(o_seq, {written});
    wb.token_pos = upload_i32(o_pos, {written});
    wb.block_tables = upload_i32(tables, {seqs, max_blocks});
    wb.max_context = *std::max_element(lengths.begin(), lengths.end());
    // Through rope_kv_write at rotation position 0 (the identity), so the cache holds k_all.
    std::vector<float> qkv;
    for (int i = 0; i < written; ++i) {
      qkv.insert(qkv.end(), q_width, 0.0f);
      qkv.insert(qkv.end(), k_all.begin() + size_t(i) * kv_width,
                 k_all.begin() + size_t(i + 1) * kv_width);
      qkv.insert(qkv.end(), v_all.begin() + size_t(i) * kv_width,
                 v_all.begin() + size_t(i + 1) * kv_width);
    }
    Tensor q_unused = poisoned({written, q_width});
    backend().rope_kv_write(upload(qkv, {written, q_width + 2 * kv_width}),
                            upload_i32(std::vector<int32_t>(written, 0), {written}), 10000.0f,
                            *cache, layer, wb, q_unused);

    // Host copies of the cache content per (seq, pos): exact and bf16-rounded.
    auto index_of = [&](int s, int p) {
      for (int i = 0; i < written; ++i)
        if (o_seq[i] == s && o_pos[i] == p) return i;
      return -1;
    };
    std::vector<float> k_round(k_all.size()), v_round(v_all.size());
    if (fp8) {
      check_fp8_rows(*cache, layer, tables, max_blocks, o_seq, o_pos, k_all, v_all, k_round, v_round);
    } else {
      for (size_t i = 0; i < k_all.size(); ++i) {
        k_round[i] = round_bf16(k_all[i]);
        v_round[i] = round_bf16(v_all[i]);
      }
    }
    std::vector<std::vector<int>> slot(seqs);
    for (int s = 0; s < seqs; ++s)
      for (int p = 0; p < lengths[s]; ++p) slot[s].push_back(index_of(s, p));

    for (size_t bi = 0; bi < batches.size(); ++bi) {
      const auto& queries = batches[bi];
      const int tokens = static_cast<int>(queries.size());
      std::vector<int32_t> q_seq, q_pos;
      int max_context = 0;
      for (const Query& q : queries) {
        q_seq.push_back(q.seq);
        q_pos.push_back(q.pos);
        max_context = std::max(max_context, q.pos + 1);
      }
      const std::vector<float> q = randn(size_t(tokens) * q_width);
      std::vector<double> ref_round(q.size()), ref_exact(q.size());
      const int group = q_heads / kv_heads;
      for (int t = 0; t < tokens; ++t)
        for (int h = 0; h < q_heads; ++h) {
          std::vector<const float*> kr, vr, ke, ve;
          for (int p = 0; p <= queries[t].pos; ++p) {
            const size_t off =
                size_t(slot[queries[t].seq][p]) * kv_width + size_t(h / group) * head_dim;
            kr.push_back(k_round.data() + off);
            vr.push_back(v_round.data() + off);
            ke.push_back(k_all.data() + off);
            ve.push_back(v_all.data() + off);
          }
          const float* qr = q.data() + size_t(t) * q_width + size_t(h) * head_dim;
          attend(qr, kr, vr, head_dim,
                 ref_round.data() + size_t(t) * q_width + size_t(h) * head_dim);
          attend(qr, ke, ve, head_dim,
                 ref_exact.data() + size_t(t) * q_width + size_t(h) * head_dim);
        }
      AttentionBatch qb;
      qb.token_seq = upload_i32(q_seq, {tokens});
      qb.token_pos = upload_i32(q_pos, {tokens});
      qb.block_tables = wb.block_tables;
      qb.max_context = max_context;
      const Tensor qt = upload(q, {tokens, q_width});
      const std::string shape = cat(fp8 ? "FP8 KV " : "", "Hq=", q_heads, " Hkv=", kv_heads, " D=", head_dim,
                                    " batch#", bi, " T=", tokens, " ctx<=", max_context);
      for (const auto& [path, label] :
           {std::pair{CudaAttentionPath::SplitK, "split-K"},
            std::pair{CudaAttentionPath::SplitKWarp, "split-K warp"},
            std::pair{CudaAttentionPath::SplitKCluster, "split-K warp cluster"},
            std::pair{CudaAttentionPath::SplitKTensorCore, "split-K tensor cores"},
            std::pair{CudaAttentionPath::TiledF32, "tiled-f32"},
            std::pair{CudaAttentionPath::TiledBf16, "tiled-tensor-core"}}) {
        set_cuda_attention_path(backend(), path);
        Tensor y = poisoned({tokens, q_width});
        backend().paged_attention(qt, *cache, layer, qb, q_heads, y);
        const std::vector<float> got = download(y);
        const bool f32 = path != CudaAttentionPath::TiledBf16;
        expect_close(cat("paged_attention ", label, " ", shape), got, ref_round,
                     f32 ? kF32Tol : kTensorCoreTol);
        expect_close(cat("paged_attention ", label, " vs unrounded KV ", shape), got, ref_exact,
                     fp8 ? kFp8KvTol : f32 ? kBf16KvTol : kTensorCoreTol);
        // The prefill (tiled) kernels also write bf16 for the o projection: the f32 output
        // rounded. The split-K kernels write f32 only and refuse a bf16 y.
        Tensor y_bf16 = backend().empty({tokens, q_width}, DType::BF16);
        if (path == CudaAttentionPath::TiledF32 || path == CudaAttentionPath::TiledBf16) {
          backend().paged_attention(qt, *cache, layer, qb, q_heads, y_bf16);
          const std::vector<float> got_bf16 = download(y_bf16);
          for (size_t i = 0; i < got.size(); ++i)
            ASSERT_EQ(round_bf16(got[i]), got_bf16[i]) << label << " " << shape << ": bf16 output " << i
                                                        << " is not the f32 output rounded";
        } else {
          EXPECT_THROW(backend().paged_attention(qt, *cache, layer, qb, q_heads, y_bf16), Error) << label;
        }
      }
      set_cuda_attention_path(backend(), CudaAttentionPath::Auto);
    }
  }

  // The FP8 rows rope_kv_write stored for the written tokens (seq, pos) against the reference
  // row format, codes and exponents byte for byte; the reference's values into k_round/v_round.
  void check_fp8_rows(KvCache& cache, int layer, const std::vector<int32_t>& tables, int max_blocks,
                      const std::vector<int32_t>& seq, const std::vector<int32_t>& pos,
                      const std::vector<float>& k_all, const std::vector<float>& v_all,
                      std::vector<float>& k_round, std::vector<float>& v_round) {
    const auto& cfg = cache.config();
    const cuda::PagedLayer paged = dynamic_cast<cuda::CudaKvCache&>(cache).layer(layer);
    const size_t values = cuda::CudaKvCache::values_per_tensor(cfg);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const auto k_codes = download_bytes(paged.k8, values), v_codes = download_bytes(paged.v8, values);
    const auto k_exps = download_bytes(paged.k_exp, values / cfg.head_dim);
    const auto v_exps = download_bytes(paged.v_exp, values / cfg.head_dim);
    const int kv_width = cfg.kv_heads * cfg.head_dim;
    int mismatches = 0;
    for (size_t i = 0; i < seq.size(); ++i) {
      const int block = tables[size_t(seq[i]) * max_blocks + pos[i] / cfg.block_size];
      const size_t slot = size_t(block) * cfg.block_size + size_t(pos[i] % cfg.block_size);
      for (int h = 0; h < cfg.kv_heads; ++h) {
        const size_t in = i * kv_width + size_t(h) * cfg.head_dim;
        const size_t row = slot * cfg.kv_heads + h;
        for (const auto& [x, codes, exps, out] : {std::tuple{&k_all, &k_codes, &k_exps, &k_round},
                                                  std::tuple{&v_all, &v_codes, &v_exps, &v_round}}) {
          const auto ref = test_common::fp8_kv_reference_row(x->data() + in, cfg.head_dim);
          mismatches += (*exps)[row] != ref.exponent;
          for (int d = 0; d < cfg.head_dim; ++d) {
            mismatches += (*codes)[row * cfg.head_dim + d] != ref.codes[size_t(d)];
            (*out)[in + d] = ref.values[size_t(d)];
          }
        }
      }
    }
    EXPECT_EQ(mismatches, 0) << "FP8 codes or exponents rope_kv_write stored differ from the reference";
  }

  // Decode (last token of each sequence), full prefill of every sequence, and a mixed batch
  // (a prefill chunk of the longest sequence next to decode tokens).
  std::vector<std::vector<Query>> standard_batches(const std::vector<int>& lengths) {
    std::vector<Query> decode, prefill, mixed;
    for (int s = 0; s < static_cast<int>(lengths.size()); ++s) {
      decode.push_back({s, lengths[s] - 1});
      for (int p = 0; p < lengths[s]; ++p) prefill.push_back({s, p});
    }
    const int longest =
        static_cast<int>(std::max_element(lengths.begin(), lengths.end()) - lengths.begin());
    mixed.push_back({0, lengths[0] - 1});
    for (int p = std::max(0, lengths[longest] - 50); p < lengths[longest]; ++p)
      mixed.push_back({longest, p});
    mixed.push_back({static_cast<int>(lengths.size()) - 1, randint(0, lengths.back() - 1)});
    return {decode, prefill, mixed};
  }
};

TEST_F(PagedAttention, Gqa4HeadDim128) {
  const std::vector<int> lengths = {1, 17, 300, 33};
  run(8, 2, 128, lengths, standard_batches(lengths));
}

TEST_F(PagedAttention, TinyHeadDimsAndGroups) {
  const std::vector<int> lengths = {randint(1, 70), 64, 65, randint(1, 130)};
  run(4, 4, 16, lengths, standard_batches(lengths));  // no GQA
  run(8, 1, 18, lengths, standard_batches(lengths));  // group of 8, head_dim not a multiple of 16
  run(6, 2, 72, lengths, standard_batches(lengths));  // group of 3
  run(4, 2, 64, lengths, standard_batches(lengths));  // staged split-K path, 2 dims per lane
  run(2, 1, 32, lengths, standard_batches(lengths));  // staged split-K path, 1 dim per lane
}

// Batches of 1-4 decode tokens (split-K's register kernel, splits in one cluster) at contexts that
// are not multiples of the block size (odd lengths[0], contexts 1 and 17), GQA groups 1, 2, 4
// and 8, head_dim 128 and 64.
TEST_F(PagedAttention, FewTokenDecodeGroups) {
  const std::vector<int> lengths = {randint(600, 1100) | 1, randint(2, 15), 1, randint(17, 200)};
  std::vector<std::vector<Query>> batches = {{{0, lengths[0] - 1}},
                                             {{1, lengths[1] - 1}, {3, lengths[3] - 1}},
                                             {{0, randint(64, lengths[0] - 2)}, {2, 0}, {3, 16}}};
  batches.push_back({});
  for (int s = 0; s < 4; ++s) batches.back().push_back({s, lengths[s] - 1});
  run(8, 8, 128, lengths, batches);   // no GQA
  run(32, 8, 128, lengths, batches);  // Moxin: group of 4
  run(16, 2, 128, lengths, batches);  // group of 8
  run(8, 4, 64, lengths, batches);    // group of 2, head_dim 64
  run(8, 1, 64, lengths, batches);    // group of 8, head_dim 64
}

TEST_F(PagedAttention, LongContextDecode) {
  const std::vector<int> lengths = {1500, 1024};
  run(32, 8, 128, lengths, {{{0, 1499}, {1, 1023}}, {{1, 700}}});
}

// The FP8 cache through every kernel: the tensor-core decode kernel (head_dim 128 and 64, groups
// 1-8, one and many splits), the generic split-K kernel (other head dims) and both prefill kernels.
TEST_F(PagedAttention, Fp8Cache) {
  const std::vector<int> lengths = {randint(200, 500) | 1, randint(2, 15), 1, randint(17, 300)};
  run(32, 8, 128, lengths, standard_batches(lengths), true);  // Moxin
  run(16, 2, 128, lengths, {{{0, lengths[0] - 1}}, {{1, lengths[1] - 1}, {3, lengths[3] - 1}}}, true);
  run(8, 8, 64, lengths, {{{0, lengths[0] - 1}, {2, 0}}}, true);
  const std::vector<int> tiny = {randint(1, 70), 64, 65, randint(1, 130)};
  run(8, 2, 16, tiny, standard_batches(tiny), true);  // the tiny test model's shape
  run(6, 2, 72, tiny, standard_batches(tiny), true);
}

// A K or V row holding an infinity or a NaN is stored poisoned (exponent -128, codes 0) and reads
// back as NaN, as the bf16 cache would spread it.
TEST_F(PagedAttention, Fp8RowsWithNonFiniteValuesArePoisoned) {
  KvCacheConfig cfg;
  cfg.dtype = KvCacheDType::Fp8E4M3;
  cfg.layers = 1;
  cfg.kv_heads = 2;
  cfg.head_dim = 64;
  cfg.num_blocks = 2;
  auto cache = backend().create_kv_cache(cfg);
  std::vector<float> qkv = randn(size_t(6) * 64);  // q, k and v of 2 heads each
  qkv[2 * 64 + 5] = INFINITY;                       // k, head 0
  qkv[4 * 64 + 64 + 7] = NAN;                       // v, head 1
  AttentionBatch b;
  b.token_seq = upload_i32({0}, {1});
  b.token_pos = upload_i32({3}, {1});
  b.block_tables = upload_i32({1}, {1, 1});
  b.max_context = 4;
  Tensor q = poisoned({1, 2 * 64});
  backend().rope_kv_write(upload(qkv, {1, 6 * 64}), upload_i32({0}, {1}), 10000.0f, *cache, 0, b, q);
  const cuda::PagedLayer paged = dynamic_cast<cuda::CudaKvCache&>(*cache).layer(0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const size_t row0 = (size_t(1) * cfg.block_size + 3) * cfg.kv_heads;  // block 1, slot 3, head 0
  const auto k_exps = download_bytes(paged.k_exp, row0 + 2), v_exps = download_bytes(paged.v_exp, row0 + 2);
  EXPECT_EQ(k_exps[row0], -128);
  EXPECT_NE(k_exps[row0 + 1], -128);
  EXPECT_NE(v_exps[row0], -128);
  EXPECT_EQ(v_exps[row0 + 1], -128);
  const auto k_codes = download_bytes(paged.k8, (row0 + 1) * 64);
  EXPECT_EQ(std::count(k_codes.begin() + row0 * 64, k_codes.end(), uint8_t{0}), 64);
}

// A captured sequence of ops replays with new input contents and matches eager execution.
TEST_F(CudaAttention, GraphCaptureReplays) {
  const int rows = 2, cols = 64, out = 48;
  HostTensor w = host_tensor("w", {out, cols}, DType::BF16, true, 0.1f);
  const Linear prepared = prepare(w);
  const Tensor norm_w = upload(randn(cols), {cols});
  Tensor x = upload(randn(rows * cols), {rows, cols});
  Tensor h = poisoned({rows, cols});
  Tensor y = poisoned({rows, out});
  auto step = [&] {
    backend().rms_norm(x, norm_w, 1e-5f, h);
    backend().linear(h, prepared, y);
    backend().gelu_erf(y, y);
  };
  auto graph = capture_cuda_graph(backend(), step);
  for (int round = 0; round < 2; ++round) {
    const std::vector<float> xs = randn(rows * cols);
    Tensor fresh = upload(xs, {rows, cols});
    backend().copy_rows(fresh, x, 0);
    graph->replay();
    const std::vector<float> replayed = download(y);
    Tensor y_eager = poisoned({rows, out});
    Tensor h_eager = poisoned({rows, cols});
    backend().rms_norm(fresh, norm_w, 1e-5f, h_eager);
    backend().linear(h_eager, prepared, y_eager);
    backend().gelu_erf(y_eager, y_eager);
    const std::vector<float> eager = download(y_eager);
    expect_close(cat("graph replay #", round, " rms_norm+linear+gelu"), replayed,
                 std::vector<double>(eager.begin(), eager.end()), 0.0);
  }
}

}  // namespace
}  // namespace moxin::cuda_test
