// The paged KV cache's ops: RoPE + K/V write, decode (split-K) and prefill (tiled) attention,
// and the two fused for a decode step (rope_paged_attention), with the rules that pick
// their kernels and split counts.
#include <algorithm>
#include <cstdlib>
#include <string>

#include "backend/cuda/cuda_backend_impl.hpp"
#include "backend/cuda/tensor_checks.hpp"

namespace moxin::cuda {
namespace {

// Up to this many tokens a batch goes through split-K attention (every token reads its own
// context once per kv head); beyond, tiles of tokens share K/V reads.
constexpr int kSplitMaxTokens = 64;
// A batched decode step brings one token per sequence: the tiled kernel would walk the
// sequences of a tile one after another (a 128-sequence step took 25x a 32-sequence one), so
// such batches stay on split-K at any size.
bool decode_like(int64_t tokens, int64_t num_seqs) { return tokens <= kSplitMaxTokens || tokens <= num_seqs; }
// With fewer (token, kv head) pairs than SMs, a split that would still walk more than this many
// positions is dealt further, up to two blocks per SM.
constexpr int kLongSplitPositions = 1024;
// Where (token, kv head) blocks fill the GPU, a split still takes at most this many positions: a
// lone long context among short ones would otherwise set the step's length on a few SMs.
constexpr int kMaxPositionsPerFullWaveSplit = 4096;

CudaKvCache& cuda_cache(KvCache& cache, int layer, const char* op) {
  auto* c = dynamic_cast<CudaKvCache*>(&cache);
  MOXIN_CHECK(c != nullptr, "[cuda] ", op, ": the KV cache was not created by this CUDA backend");
  MOXIN_CHECK(layer >= 0 && layer < c->config().layers, "[cuda] ", op, ": layer ", layer,
              " outside the cache's 0..", c->config().layers - 1);
  return *c;
}

TokenIndex token_index(const AttentionBatch& batch, int64_t tokens, const char* op) {
  require(batch.token_seq, DType::I32, op, "token_seq");
  require(batch.token_pos, DType::I32, op, "token_pos");
  require(batch.block_tables, DType::I32, op, "block_tables");
  MOXIN_CHECK(batch.token_seq.numel() == tokens && batch.token_pos.numel() == tokens, "[cuda] ", op,
              ": ", tokens, " tokens but token_seq ", batch.token_seq.shape_str(),
              " and token_pos ", batch.token_pos.shape_str());
  MOXIN_CHECK(batch.block_tables.numel() > 0 || tokens == 0, "[cuda] ", op, ": empty block_tables");
  TokenIndex index;
  index.token_seq = data_of<const int32_t>(batch.token_seq);
  index.token_pos = data_of<const int32_t>(batch.token_pos);
  index.block_tables = data_of<const int32_t>(batch.block_tables);
  index.tokens = static_cast<int>(tokens);
  index.num_seqs = static_cast<int>(batch.block_tables.rows());
  index.max_blocks = static_cast<int>(batch.block_tables.cols());
  return index;
}

}  // namespace

void CudaBackend::rope_kv_write(const Tensor& qkv, const Tensor& positions, float theta,
                                KvCache& cache, int layer, const AttentionBatch& batch, Tensor& q) {
  rope_kv_write_scaled(qkv, {}, positions, theta, cache, layer, batch, q);
}

void CudaBackend::rope_kv_write_scaled(const Tensor& qkv, QkvScales scales, const Tensor& positions, float theta,
                                       KvCache& cache, int layer, const AttentionBatch& batch, Tensor& q) {
  CudaKvCache& c = cuda_cache(cache, layer, "rope_kv_write");
  require(qkv, DType::F32, "rope_kv_write", "qkv");
  require(q, DType::F32, "rope_kv_write", "q");
  require(positions, DType::I32, "rope_kv_write", "positions");
  const int64_t tokens = qkv.rows(), head_dim = c.config().head_dim;
  const int64_t kv_width = int64_t{c.config().kv_heads} * head_dim;
  MOXIN_CHECK(head_dim % 2 == 0 && q.cols() % head_dim == 0 && q.rows() == tokens &&
                  qkv.cols() == q.cols() + 2 * kv_width && positions.numel() == tokens,
              "[cuda] rope_kv_write: qkv ", qkv.shape_str(), ", q ", q.shape_str(), " and ",
              positions.numel(), " positions do not describe the same tokens of q heads plus ",
              c.config().kv_heads, " k and v heads of ", head_dim, " (even)");
  MOXIN_CHECK(q.data != qkv.data || q.numel() == 0, "[cuda] rope_kv_write: q must not be qkv");
  cuda::rope_kv_write(data_of<const float>(qkv), data_of<const int32_t>(positions),
                      static_cast<int>(q.cols() / head_dim), theta, data_of<float>(q),
                      c.layer(layer), token_index(batch, tokens, "rope_kv_write"), stream(), scales);
}

int CudaBackend::attention_splits(int tokens, int q_heads, int kv_heads, int head_dim,
                                  int max_context) const {
  const int64_t per_split = int64_t{tokens} * q_heads * (head_dim + 2);
  const int64_t by_workspace =
      std::max<int64_t>(1, attention_partial_floats_ / std::max<int64_t>(per_split, 1));
  const int64_t most = std::min<int64_t>(by_workspace, paged_attention_max_splits());
  const int64_t pairs = int64_t{tokens} * kv_heads;  // (token, kv head) blocks of one split
  const int64_t sms = context_->multiprocessors;
  const int64_t context = std::max(max_context, 1);
  auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  // The splits' counters cover kAttentionCounters (token, kv head) pairs; past that one split.
  if (pairs > kAttentionCounters) return 1;
  // A full wave of blocks already fills the GPU: splitting short contexts further only adds
  // merge work (H200, 1k context, tensor-core kernel: batch 32 41 us with 1 split, 46 with 2,
  // 55 with 4; batch 128 139 / 152 / 183 us); long ones are dealt to splits of at most
  // kMaxPositionsPerFullWaveSplit.
  if (pairs >= sms)
    return static_cast<int>(std::clamp<int64_t>(ceil_div(context, kMaxPositionsPerFullWaveSplit), 1, most));
  // Fewer pairs than SMs: about one block per SM, none shorter than kMinPositionsPerSplit (H200,
  // 1k context, best of 1-16 splits: batch 1 8 splits 7.3 us, batch 4 4-6 splits 10.5-10.9 us,
  // batch 8 2 splits 13.9 us, batch 16 1 split 24.3 us; twice as many blocks cost 12-48% more);
  // a long context up to two blocks per SM (batch 1, 32k: 32 splits 47 us, 16 splits 54 us).
  int64_t splits = std::min(sms / pairs, ceil_div(context, kMinPositionsPerSplit));
  if (context > splits * kLongSplitPositions)
    splits = std::max(splits, std::min(2 * sms / pairs, ceil_div(context, kLongSplitPositions)));
  return static_cast<int>(std::clamp<int64_t>(splits, 1, most));
}

void CudaBackend::paged_attention(const Tensor& q, KvCache& cache, int layer,
                                  const AttentionBatch& batch, int q_heads, Tensor& y) {
  require_main_lane("paged_attention");
  CudaKvCache& c = cuda_cache(cache, layer, "paged_attention");
  require(q, DType::F32, "paged_attention", "q");
  const KvCacheConfig& cfg = c.config();
  MOXIN_CHECK(q_heads > 0 && q_heads % cfg.kv_heads == 0, "[cuda] paged_attention: ", q_heads,
              " query heads is not a multiple of ", cfg.kv_heads, " kv heads");
  const int64_t tokens = q.rows();
  require_shape(q, tokens, int64_t{q_heads} * cfg.head_dim, "paged_attention", "q");
  require_shape(y, tokens, int64_t{q_heads} * cfg.head_dim, "paged_attention", "y");
  const TokenIndex index = token_index(batch, tokens, "paged_attention");
  const bool use_split = attention_uses_split(tokens, index.num_seqs, q_heads, cfg.kv_heads);
  // The split-K kernels write f32; the prefill kernels either (attention_output_dtype).
  const Activations out = require_activations(y, "paged_attention", "y");
  MOXIN_CHECK(!use_split || out.f32 != nullptr, "[cuda] paged_attention: y is bf16, but this batch of ", tokens,
              " tokens runs the split-K kernels, which write f32 (see Backend::attention_output_dtype)");
  if (use_split) {
    const int group = q_heads / cfg.kv_heads;
    const int splits = attention_splits(static_cast<int>(tokens), q_heads, cfg.kv_heads,
                                        cfg.head_dim, std::max(batch.max_context, 1));
    float* partial = static_cast<float*>(attention_partial_.get());
    int* counters = static_cast<int*>(attention_counters_.get());
    const auto* qp = data_of<const float>(q);
    float* yp = data_of<float>(y);
    // Tensor cores where they fit: streamed tiles kept the KV reads near the bandwidth where the
    // register kernel stalled on its shuffles (docs/cuda-notes.md, decode attention v7); then
    // the register kernel (v5-v6; bf16 caches only), then the staged CUDA-core kernel for any
    // shape and format.
    const bool fp8 = cfg.dtype == KvCacheDType::Fp8E4M3;
    if (split_on_tensor_cores(group, cfg.head_dim))
      paged_attention_mma(qp, c.layer(layer), index, q_heads, splits, true, partial, counters, yp,
                          stream());
    else if (attention_path_ != CudaAttentionPath::SplitK && !fp8 &&
             paged_attention_warp_fits(group, cfg.head_dim))
      paged_attention_warp(qp, c.layer(layer), index, q_heads, splits,
                           attention_path_ != CudaAttentionPath::SplitKWarp, partial, counters, yp,
                           stream());
    else
      paged_attention_split(qp, c.layer(layer), index, q_heads, splits, partial, counters, yp,
                            stream());
  } else {
    paged_attention_tiled(data_of<const float>(q), c.layer(layer), index, q_heads,
                          attention_path_ != CudaAttentionPath::TiledF32, out, stream());
  }
}

bool CudaBackend::fuses_rope_into_attention(const KvCacheConfig& cache, const AttentionBatch& batch, int64_t tokens,
                                            int q_heads) const {
  return fused_rope_ && batch.one_token_per_sequence && cache.dtype != KvCacheDType::Fp8E4M3 && cache.kv_heads > 0 &&
         q_heads % cache.kv_heads == 0 && split_on_tensor_cores(q_heads / cache.kv_heads, cache.head_dim) &&
         attention_uses_split(tokens, batch.block_tables.rows(), q_heads, cache.kv_heads);
}

bool CudaBackend::split_on_tensor_cores(int group, int head_dim) const {
  const bool tensor_cores =
      attention_path_ == CudaAttentionPath::Auto || attention_path_ == CudaAttentionPath::SplitKTensorCore;
  return tensor_cores && paged_attention_mma_fits(group, head_dim);
}

// A decode step's RoPE + K/V write inside its attention kernel (kernels.hpp's
// rope_paged_attention_mma) where fuses_rope_into_attention says so; otherwise the two ops.
void CudaBackend::rope_paged_attention(const Tensor& qkv, const Tensor& positions, float theta, KvCache& cache,
                                       int layer, const AttentionBatch& batch, int q_heads, Tensor& q, Tensor& y) {
  CudaKvCache& c = cuda_cache(cache, layer, "rope_paged_attention");
  const KvCacheConfig& cfg = c.config();
  const int64_t tokens = qkv.rows();
  if (!fuses_rope_into_attention(cfg, batch, tokens, q_heads)) {
    Backend::rope_paged_attention(qkv, positions, theta, cache, layer, batch, q_heads, q, y);
    return;
  }
  require_main_lane("rope_paged_attention");
  require(qkv, DType::F32, "rope_paged_attention", "qkv");
  require(positions, DType::I32, "rope_paged_attention", "positions");
  require(y, DType::F32, "rope_paged_attention", "y");
  const int64_t q_width = int64_t{q_heads} * cfg.head_dim;
  require_shape(qkv, tokens, q_width + 2 * int64_t{cfg.kv_heads} * cfg.head_dim, "rope_paged_attention", "qkv");
  require_shape(y, tokens, q_width, "rope_paged_attention", "y");
  MOXIN_CHECK(positions.numel() == tokens, "[cuda] rope_paged_attention: ", positions.numel(), " positions for ",
              tokens, " tokens");
  const TokenIndex index = token_index(batch, tokens, "rope_paged_attention");
  const int splits = attention_splits(static_cast<int>(tokens), q_heads, cfg.kv_heads, cfg.head_dim,
                                      std::max(batch.max_context, 1));
  DecodeRope rope;
  rope.qkv = data_of<const float>(qkv);
  rope.positions = data_of<const int32_t>(positions);
  rope.frequencies = rope_frequencies(theta, cfg.head_dim);
  rope_paged_attention_mma(rope, c.layer(layer), index, q_heads, splits, true,
                           static_cast<float*>(attention_partial_.get()), static_cast<int*>(attention_counters_.get()),
                           data_of<float>(y), stream());
}

bool CudaBackend::attention_uses_split(int64_t tokens, int64_t num_seqs, int q_heads, int kv_heads) const {
  const bool split_usable = kv_heads > 0 && q_heads / kv_heads <= 8;
  return split_usable && (attention_path_ == CudaAttentionPath::SplitK ||
                          attention_path_ == CudaAttentionPath::SplitKWarp ||
                          attention_path_ == CudaAttentionPath::SplitKCluster ||
                          attention_path_ == CudaAttentionPath::SplitKTensorCore ||
                          (attention_path_ == CudaAttentionPath::Auto && decode_like(tokens, num_seqs)));
}

// The prefill kernels round their output for the o projection where it multiplies bf16 (a
// prefill's 1024 x 4096 conversion was 12 us a layer on an H100); the split-K ones write f32.
DType CudaBackend::attention_output_dtype(const AttentionBatch& batch, int64_t tokens, int q_heads, int kv_heads,
                                          const Linear& o) const {
  if (attention_uses_split(tokens, batch.block_tables.rows(), q_heads, kv_heads)) return act_dtype();
  // A block holds one head of its tokens, not their whole rows: for per-token E4M3 the o
  // projection quantizes the bf16 output itself.
  const DType wanted = linear_input_dtype(o, tokens);
  return wanted == DType::F8_E4M3 ? DType::BF16 : wanted;
}

}  // namespace moxin::cuda

namespace moxin {

void set_cuda_fused_rope(Backend& backend, bool on) {
  cuda::cuda_backend_of(backend, "set_cuda_fused_rope").set_fused_rope(on);
}

void set_cuda_attention_path(Backend& backend, CudaAttentionPath path) {
  cuda::cuda_backend_of(backend, "set_cuda_attention_path").set_attention_path(path);
}

}  // namespace moxin
