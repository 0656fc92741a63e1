// Backend::rope_paged_attention with the RoPE and the K/V write fused into the split-K tensor-core
// decode kernel (a one-token-per-sequence batch over a bf16 cache) against the two ops it
// replaces (rope_kv_write, then paged_attention): the same output bits and the same cache bytes,
// with the fused kernel checked to be the one that ran. And the fused output against an f64
// reference: q rotated in f64 from transformers' f32 angle, the new K row against its f64
// rotation (bf16 rounding), attention in f64 over the cache's bf16 values.
#include <algorithm>
#include <cmath>
#include <numeric>

#include <cuda_runtime.h>

#include "backend/cuda/cuda_backend.hpp"
#include "backend/cuda/cuda_backend_impl.hpp"
#include "core/bf16.hpp"
#include "core/check.hpp"
#include "cuda_test_support.hpp"

namespace moxin::cuda_test {
namespace {

constexpr double kF32Tol = 1e-5;  // the split-K kernels answer at f32 accuracy

class RopeAttention : public CudaOpsTest {
 protected:
  cuda::CudaBackend& cuda() { return dynamic_cast<cuda::CudaBackend&>(backend()); }

  // One layer's K and V halves of a cache, as bf16 bits.
  std::vector<uint16_t> cache_bits(KvCache& cache) {
    const cuda::PagedLayer layer = dynamic_cast<cuda::CudaKvCache&>(cache).layer(0);
    const size_t values = cuda::CudaKvCache::values_per_tensor(cache.config());
    std::vector<uint16_t> bits(2 * values);
    backend().synchronize();
    EXPECT_EQ(cudaMemcpy(bits.data(), layer.k, values * 2, cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(bits.data() + values, layer.v, values * 2, cudaMemcpyDeviceToHost), cudaSuccess);
    return bits;
  }

  // Sequences of lengths[s] cached tokens (random K/V), then one decode token per sequence at
  // position lengths[s], rotated at a random position up to 32k (the op takes rotation positions
  // apart from cache positions). The batch's max_context is `bucket`, as a decode graph captured
  // for a longer context passes it (more splits than the contexts use).
  void run(int q_heads, int kv_heads, int head_dim, const std::vector<int>& lengths, int bucket) {
    KvCacheConfig cfg;
    cfg.layers = 1;
    cfg.kv_heads = kv_heads;
    cfg.head_dim = head_dim;
    cfg.block_size = 16;
    const int seqs = static_cast<int>(lengths.size());
    const int longest = *std::max_element(lengths.begin(), lengths.end()) + 1;
    ASSERT_LE(longest, bucket);
    const int width_blocks = (bucket + cfg.block_size - 1) / cfg.block_size;
    int needed = 0;
    for (int len : lengths) needed += len / cfg.block_size + 1;  // blocks of len + 1 positions
    cfg.num_blocks = needed + 2;
    std::vector<int32_t> physical(cfg.num_blocks);
    std::iota(physical.begin(), physical.end(), 0);
    std::shuffle(physical.begin(), physical.end(), rng_);
    std::vector<int32_t> tables(size_t(seqs) * width_blocks, -1);
    int next = 0;
    for (int s = 0; s < seqs; ++s)
      for (int b = 0; b <= lengths[s] / cfg.block_size; ++b) tables[size_t(s) * width_blocks + b] = physical[next++];
    const Tensor table_tensor = upload_i32(tables, {seqs, width_blocks});
    const int q_width = q_heads * head_dim, kv_width = kv_heads * head_dim, width = q_width + 2 * kv_width;

    // The same history in two caches, written at rotation 0 (the identity).
    auto separate_cache = backend().create_kv_cache(cfg);
    auto fused_cache = backend().create_kv_cache(cfg);
    std::vector<int32_t> h_seq, h_pos;
    for (int s = 0; s < seqs; ++s)
      for (int p = 0; p < lengths[s]; ++p) {
        h_seq.push_back(s);
        h_pos.push_back(p);
      }
    const int written = static_cast<int>(h_seq.size());
    if (written > 0) {
      AttentionBatch history;
      history.token_seq = upload_i32(h_seq, {written});
      history.token_pos = upload_i32(h_pos, {written});
      history.block_tables = table_tensor;
      history.max_context = longest;
      const Tensor qkv = upload(randn(size_t(written) * width), {written, width});
      const Tensor zeros = upload_i32(std::vector<int32_t>(written, 0), {written});
      for (KvCache* cache : {separate_cache.get(), fused_cache.get()}) {
        Tensor q = poisoned({written, q_width});
        backend().rope_kv_write(qkv, zeros, 10000.0f, *cache, 0, history, q);
      }
    }

    // The decode step.
    std::vector<int32_t> seq(seqs), pos(seqs), rotation(seqs);
    std::iota(seq.begin(), seq.end(), 0);
    for (int s = 0; s < seqs; ++s) {
      pos[s] = lengths[s];
      rotation[s] = randint(0, 32767);
    }
    AttentionBatch step;
    step.token_seq = upload_i32(seq, {seqs});
    step.token_pos = upload_i32(pos, {seqs});
    step.block_tables = table_tensor;
    step.max_context = bucket;
    step.one_token_per_sequence = true;
    const float theta = 1e6f;
    const std::vector<float> qkv = randn(size_t(seqs) * width);
    const Tensor qkv_t = upload(qkv, {seqs, width}), rotation_t = upload_i32(rotation, {seqs});
    const std::string shape = cat("Hq=", q_heads, " Hkv=", kv_heads, " D=", head_dim, " T=", seqs, " bucket ", bucket,
                                  " (", cuda().attention_splits(seqs, q_heads, kv_heads, head_dim, bucket), " splits)");

    set_cuda_fused_rope(backend(), false);
    ASSERT_FALSE(cuda().fuses_rope_into_attention(cfg, step, seqs, q_heads)) << shape;
    Tensor q = poisoned({seqs, q_width}), y_separate = poisoned({seqs, q_width});
    backend().rope_paged_attention(qkv_t, rotation_t, theta, *separate_cache, 0, step, q_heads, q, y_separate);
    set_cuda_fused_rope(backend(), true);
    ASSERT_TRUE(cuda().fuses_rope_into_attention(cfg, step, seqs, q_heads)) << shape;
    Tensor y_fused = poisoned({seqs, q_width});
    backend().rope_paged_attention(qkv_t, rotation_t, theta, *fused_cache, 0, step, q_heads, q, y_fused);

    const std::vector<float> separate = download(y_separate), fused = download(y_fused);
    for (size_t i = 0; i < fused.size(); ++i)
      ASSERT_EQ(fused[i], separate[i]) << shape << ": output " << i << " differs from rope_kv_write + paged_attention";
    const std::vector<uint16_t> cache_separate = cache_bits(*separate_cache), cache_fused = cache_bits(*fused_cache);
    ASSERT_EQ(cache_fused, cache_separate) << shape << ": the fused kernel stored other K/V bytes";

    // f64 reference: transformers' f32 angle, everything after it in f64.
    const size_t values = cache_fused.size() / 2;
    auto cached = [&](bool v, int s, int p, int h, int d) {
      const size_t slot = size_t(tables[size_t(s) * width_blocks + p / cfg.block_size]) * cfg.block_size +
                          size_t(p % cfg.block_size);
      return double(bf16_to_f32(cache_fused[(v ? values : 0) + slot * kv_width + size_t(h) * head_dim + size_t(d)]));
    };
    const int half = head_dim / 2, group = q_heads / kv_heads;
    std::vector<double> ref(size_t(seqs) * q_width), k_new_ref, k_new_got;
    std::vector<float> k_new_got_f;
    for (int s = 0; s < seqs; ++s) {
      const float* row = qkv.data() + size_t(s) * width;
      auto rotate = [&](const float* x, std::vector<double>& out) {
        out.assign(size_t(head_dim), 0.0);
        for (int i = 0; i < half; ++i) {
          const float inv_freq = 1.0f / static_cast<float>(std::pow(double(theta), double(float(2 * i) / float(head_dim))));
          const double angle = static_cast<float>(float(rotation[s]) * inv_freq);
          out[size_t(i)] = x[i] * std::cos(angle) - x[i + half] * std::sin(angle);
          out[size_t(i + half)] = x[i + half] * std::cos(angle) + x[i] * std::sin(angle);
        }
      };
      std::vector<double> rotated;
      for (int h = 0; h < kv_heads; ++h) {
        rotate(row + q_width + h * head_dim, rotated);
        for (int d = 0; d < head_dim; ++d) {
          k_new_ref.push_back(rotated[size_t(d)]);
          k_new_got_f.push_back(static_cast<float>(cached(false, s, pos[s], h, d)));
          ASSERT_EQ(cached(true, s, pos[s], h, d), round_bf16(row[q_width + kv_width + h * head_dim + d]))
              << shape << ": v of sequence " << s << " head " << h << " dim " << d;
        }
      }
      for (int h = 0; h < q_heads; ++h) {
        rotate(row + h * head_dim, rotated);
        const double scale = 1.0 / std::sqrt(double(head_dim));
        std::vector<double> scores(size_t(pos[s]) + 1);
        double mx = -INFINITY;
        for (int p = 0; p <= pos[s]; ++p) {
          double dot = 0.0;
          for (int d = 0; d < head_dim; ++d) dot += rotated[size_t(d)] * cached(false, s, p, h / group, d);
          scores[size_t(p)] = dot * scale;
          mx = std::max(mx, scores[size_t(p)]);
        }
        double sum = 0.0;
        for (double& x : scores) sum += (x = std::exp(x - mx));
        for (int d = 0; d < head_dim; ++d) {
          double acc = 0.0;
          for (int p = 0; p <= pos[s]; ++p) acc += scores[size_t(p)] * cached(true, s, p, h / group, d);
          ref[size_t(s) * q_width + size_t(h) * head_dim + size_t(d)] = acc / sum;
        }
      }
    }
    expect_close("rope_paged_attention fused: new k rows (bf16) " + shape, k_new_got_f, k_new_ref, 1.0 / 256);
    expect_close("rope_paged_attention fused " + shape, fused, ref, kF32Tol);
  }
};

// Moxin's shape (group 4, head_dim 128): one sequence with 16 splits of a 2048 bucket (most of
// them empty) and its first token (context 1), a few sequences at block-boundary lengths, and a
// batch whose (token, kv head) blocks fill the GPU (one split).
TEST_F(RopeAttention, MoxinShapeBatchesAndBuckets) {
  run(32, 8, 128, {randint(600, 1100)}, 2048);
  run(32, 8, 128, {0}, 256);
  run(32, 8, 128, {15, 16, 17, randint(1, 400)}, 512);
  std::vector<int> many(32);
  for (int& len : many) len = randint(0, 300);
  run(32, 8, 128, many, 512);
}

// One-token steps: the 1280 bucket's 10 splits, one split, a context past the bucket's splits'
// minimum, head_dim 64, a group of 5.
TEST_F(RopeAttention, OneTokenSteps) {
  run(32, 8, 128, {randint(300, 1270)}, 1280);
  run(32, 8, 128, {randint(0, 100)}, 128);
  run(32, 8, 128, {randint(1, 60)}, 1280);
  run(16, 4, 64, {randint(100, 1000)}, 1024);
  run(40, 8, 128, {randint(100, 500)}, 512);
}

// Groups 1 and 8, head_dim 64.
TEST_F(RopeAttention, OtherGroupsAndHeadDims) {
  run(8, 8, 128, {randint(100, 700), randint(1, 40)}, 1024);
  run(16, 2, 64, {randint(100, 700), 31, 0}, 1024);
  run(8, 1, 64, {randint(1, 200)}, 256);
}

// Where the batch is not one token per sequence, the cache is FP8, or the fusion is off, the op
// runs rope_kv_write and paged_attention.
TEST_F(RopeAttention, FusesOnlyDecodeStepsOverBf16Caches) {
  KvCacheConfig cfg;
  cfg.kv_heads = 8;
  cfg.head_dim = 128;
  AttentionBatch batch;
  batch.block_tables = upload_i32({0, 1}, {2, 1});
  batch.one_token_per_sequence = true;
  EXPECT_TRUE(cuda().fuses_rope_into_attention(cfg, batch, 2, 32));
  batch.one_token_per_sequence = false;
  EXPECT_FALSE(cuda().fuses_rope_into_attention(cfg, batch, 2, 32));
  batch.one_token_per_sequence = true;
  cfg.dtype = KvCacheDType::Fp8E4M3;
  EXPECT_FALSE(cuda().fuses_rope_into_attention(cfg, batch, 2, 32));
  cfg.dtype = KvCacheDType::Auto;
  set_cuda_attention_path(backend(), CudaAttentionPath::SplitKWarp);
  EXPECT_FALSE(cuda().fuses_rope_into_attention(cfg, batch, 2, 32));
  set_cuda_attention_path(backend(), CudaAttentionPath::Auto);
  set_cuda_fused_rope(backend(), false);
  EXPECT_FALSE(cuda().fuses_rope_into_attention(cfg, batch, 2, 32));
  set_cuda_fused_rope(backend(), true);
}

}  // namespace
}  // namespace moxin::cuda_test
