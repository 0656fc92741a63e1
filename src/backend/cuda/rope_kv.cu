// Rotary position embedding (NeoX rotate-half, as transformers' Mistral applies it) and the
// write of new K/V rows into the paged cache.
#include <cuda_bf16.h>

#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"

namespace moxin::cuda {
namespace {

constexpr int kRopeThreads = 128;
constexpr int kKvWriteThreads = 128;

// One block per token. The angle is computed the way transformers does in f32:
// inv_freq = 1 / theta^(2i / D), angle = f32(pos) * inv_freq, then accurate cosf/sinf (full
// range reduction: angles reach 32k radians).
__global__ void __launch_bounds__(kRopeThreads)
    rope_kernel(float* __restrict__ q, float* __restrict__ k, const int32_t* __restrict__ positions,
                int q_heads, int kv_heads, int head_dim, float theta) {
  wait_for_prior_kernels();
  const int token = blockIdx.x;
  const int half = head_dim / 2;
  const float pos = static_cast<float>(positions[token]);
  float* q_row = q + static_cast<size_t>(token) * q_heads * head_dim;
  float* k_row = k + static_cast<size_t>(token) * kv_heads * head_dim;
  for (int idx = threadIdx.x; idx < (q_heads + kv_heads) * half; idx += kRopeThreads) {
    const int head = idx / half;
    const int i = idx % half;
    float* x = head < q_heads ? q_row + head * head_dim : k_row + (head - q_heads) * head_dim;
    // The f32 power rounded correctly (via f64), so CPU and GPU agree on every inv_freq: one
    // ulp off would move the angle at position 32k by ~2e-3 rad.
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    const float inv_freq =
        1.0f / static_cast<float>(pow(static_cast<double>(theta), static_cast<double>(exponent)));
    const float angle = pos * inv_freq;
    const float c = cosf(angle);
    const float s = sinf(angle);
    const float x1 = x[i];
    const float x2 = x[i + half];
    x[i] = x1 * c - x2 * s;
    x[i + half] = x2 * c + x1 * s;
  }
}

// One block per token: its K and V rows (all kv heads) go to block_tables[seq][pos / bs],
// slot pos % bs, rounded to bf16.
__global__ void __launch_bounds__(kKvWriteThreads)
    kv_write_kernel(PagedLayer cache, const float* __restrict__ k, const float* __restrict__ v,
                    TokenIndex index) {
  wait_for_prior_kernels();
  const int token = blockIdx.x;
  const int seq = index.token_seq[token];
  const int pos = index.token_pos[token];
  if (seq < 0 || seq >= index.num_seqs || pos < 0 || pos / cache.block_size >= index.max_blocks)
    return;
  const int block =
      index.block_tables[static_cast<size_t>(seq) * index.max_blocks + pos / cache.block_size];
  if (block < 0 || block >= cache.num_blocks) return;
  const int row = cache.kv_heads * cache.head_dim;
  const size_t dst = (static_cast<size_t>(block) * cache.block_size + pos % cache.block_size) * row;
  auto* kd = reinterpret_cast<__nv_bfloat16*>(cache.k) + dst;
  auto* vd = reinterpret_cast<__nv_bfloat16*>(cache.v) + dst;
  const float* ks = k + static_cast<size_t>(token) * row;
  const float* vs = v + static_cast<size_t>(token) * row;
  for (int e = threadIdx.x; e < row; e += kKvWriteThreads) {
    kd[e] = __float2bfloat16_rn(ks[e]);
    vd[e] = __float2bfloat16_rn(vs[e]);
  }
}

}  // namespace

void rope(float* q, float* k, const int32_t* positions, int tokens, int q_heads, int kv_heads,
          int head_dim, float theta, cudaStream_t stream) {
  if (tokens == 0) return;
  launch_kernel("rope_kernel", rope_kernel, tokens, kRopeThreads, 0, stream, q, k, positions,
                q_heads, kv_heads, head_dim, theta);
}

void kv_write(const PagedLayer& cache, const float* k, const float* v, const TokenIndex& index,
              cudaStream_t stream) {
  if (index.tokens == 0) return;
  launch_kernel("kv_write_kernel", kv_write_kernel, index.tokens, kKvWriteThreads, 0, stream, cache,
                k, v, index);
}

}  // namespace moxin::cuda
