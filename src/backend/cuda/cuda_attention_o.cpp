// A decode step's attention and its output projection in one launch (Backend::
// rope_paged_attention_linear_add, kernels.hpp's rope_paged_attention_o_mma): at batch 1 the
// layer loses the boundary between the two kernels. Elsewhere the two ops run.
#include "backend/cuda/cuda_backend_impl.hpp"
#include "backend/cuda/paged_attention_args.hpp"
#include "backend/cuda/tensor_checks.hpp"

namespace moxin::cuda {

bool CudaBackend::fuses_attention_into_o(const KvCacheConfig& cache, const AttentionBatch& batch, int64_t tokens,
                                         int q_heads, const Linear& o) const {
  if (!fused_attention_o_ || tokens != 1 || !fuses_rope_into_attention(cache, batch, tokens, q_heads)) return false;
  const CudaLinear& w = cuda_linear(o, "fuses_attention_into_o");
  if (o.in_features != int64_t{q_heads} * cache.head_dim || w.weight == nullptr ||
      !fuses_residual_step(w, 1, o.out_features, o.in_features, false))
    return false;
  return rope_attention_o_blocks(cache.head_dim, cache.kv_heads, q_heads, decode_splits(batch, tokens, q_heads, cache),
                                 true, static_cast<int>(o.out_features)) > 0;
}

void CudaBackend::rope_paged_attention_linear_add(const Tensor& qkv, const Tensor& positions, float theta,
                                                  KvCache& cache, int layer, const AttentionBatch& batch, int q_heads,
                                                  Tensor& q, Tensor& y, const Linear& o, Tensor& out, Tensor& x) {
  constexpr const char* kOp = "rope_paged_attention_linear_add";
  CudaKvCache& c = cuda_cache(cache, layer, kOp);
  const KvCacheConfig& cfg = c.config();
  if (!fuses_attention_into_o(cfg, batch, qkv.rows(), q_heads, o)) {
    Backend::rope_paged_attention_linear_add(qkv, positions, theta, cache, layer, batch, q_heads, q, y, o, out, x);
    return;
  }
  const DecodeRope rope = decode_rope(qkv, positions, theta, cfg, q_heads, y, kOp);
  require(x, DType::F32, kOp, "x");
  require_shape(x, 1, o.out_features, kOp, "x");
  const CudaLinear& w = cuda_linear(o, kOp);
  DecodeOProjection projection;
  projection.w = static_cast<const bf16_bits*>(w.weight.get());
  projection.bias = static_cast<const float*>(w.bias.get());
  projection.x = data_of<float>(x);
  projection.n = static_cast<int>(o.out_features);
  projection.sync = static_cast<int*>(o_projection_sync_.get());
  rope_paged_attention_o_mma(rope, c.layer(layer), token_index(batch, 1, kOp), q_heads,
                             decode_splits(batch, 1, q_heads, cfg), true, static_cast<float*>(attention_partial_.get()),
                             static_cast<int*>(attention_counters_.get()), data_of<float>(y), projection, stream());
}

}  // namespace moxin::cuda

namespace moxin {

void set_cuda_fused_attention_o(Backend& backend, bool on) {
  cuda::cuda_backend_of(backend, "set_cuda_fused_attention_o").set_fused_attention_o(on);
}

}  // namespace moxin
