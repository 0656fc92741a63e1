// The block-level core shared by the two tiled attention kernels (ViT and paged prefill):
// a tile of kQueryTile query rows against successive tiles of kKeyTile keys, with an online
// softmax, all in f32 in shared memory.
//
// Thread layout (128 threads): for scores, thread (tq = tid % 8, tk = tid / 8) computes the
// 4 x 4 scores of queries tq + 8i and keys tk + 16j; for the output, thread (tq, td = tid / 8)
// owns queries tq + 8i and dims td + 16j (j < DJ, so head_dim <= 16 * DJ). Row strides are
// head_dim + 1 and kKeyTile + 1 words, odd, so each warp's shared-memory reads hit distinct
// banks or broadcast.
#pragma once

#include <cuda_runtime.h>

namespace moxin::cuda {

constexpr int kQueryTile = 32;
constexpr int kKeyTile = 64;
constexpr int kTileThreads = 128;

// Dynamic shared memory of a tile kernel for `head_dim`.
inline size_t tile_smem_bytes(int head_dim) {
  const int dp = head_dim + 1;
  return sizeof(float) *
         ((kQueryTile + 2 * kKeyTile) * dp + kQueryTile * (kKeyTile + 1) + 3 * kQueryTile);
}

template <int DJ>
struct AttentionTile {
  float* q;     // [kQueryTile][dp], filled by the caller
  float* k;     // [kKeyTile][dp], filled by the caller per key tile
  float* v;     // [kKeyTile][dp]
  float* s;     // [kQueryTile][kKeyTile + 1] scores, then probabilities
  float* m;     // running max per query
  float* l;     // running sum per query
  float* corr;  // rescale factor of the current tile per query
  int head_dim;
  int dp;
  float acc[4][DJ];

  __device__ AttentionTile(float* smem, int head_dim_) : head_dim(head_dim_), dp(head_dim_ + 1) {
    q = smem;
    k = q + kQueryTile * dp;
    v = k + kKeyTile * dp;
    s = v + kKeyTile * dp;
    m = s + kQueryTile * (kKeyTile + 1);
    l = m + kQueryTile;
    corr = l + kQueryTile;
    if (threadIdx.x < kQueryTile) {
      m[threadIdx.x] = -INFINITY;
      l[threadIdx.x] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < DJ; ++j) acc[i][j] = 0.0f;
  }

  // Consumes keys [key0, key0 + n) already in k and v (the caller synchronized after loading).
  // visible(query_row, key) says whether the query may attend to that key.
  template <class Visible>
  __device__ void consume(int key0, int n, float scale, Visible visible) {
    const int tid = threadIdx.x;
    const int tq = tid % 8;
    const int tk = tid / 8;
    float dot[4][4] = {};
    for (int d = 0; d < head_dim; ++d) {
      float qv[4], kv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) qv[i] = q[(tq + 8 * i) * dp + d];
#pragma unroll
      for (int j = 0; j < 4; ++j) kv[j] = k[(tk + 16 * j) * dp + d];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) dot[i][j] = fmaf(qv[i], kv[j], dot[i][j]);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int row = tq + 8 * i;
        const int col = tk + 16 * j;
        s[row * (kKeyTile + 1) + col] =
            (col < n && visible(row, key0 + col)) ? dot[i][j] * scale : -INFINITY;
      }
    __syncthreads();

    // Online softmax: warp w updates rows 8w .. 8w + 7.
    const int warp = tid / 32;
    const int lane = tid % 32;
    for (int row = warp * 8; row < warp * 8 + 8; ++row) {
      float* sr = s + row * (kKeyTile + 1);
      const float s0 = sr[lane];
      const float s1 = sr[lane + 32];
      float tile_max = fmaxf(s0, s1);
      for (int o = 16; o > 0; o /= 2)
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, o));
      const float m_old = m[row];
      const float m_new = fmaxf(m_old, tile_max);
      float p0 = 0.0f, p1 = 0.0f, c = 1.0f;
      if (m_new != -INFINITY) {
        p0 = expf(s0 - m_new);
        p1 = expf(s1 - m_new);
        c = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
      }
      sr[lane] = p0;
      sr[lane + 32] = p1;
      float sum = p0 + p1;
      for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      __syncwarp();
      if (lane == 0) {
        l[row] = l[row] * c + sum;
        m[row] = m_new;
        corr[row] = c;
      }
    }
    __syncthreads();

    const int td = tid / 8;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float c = corr[tq + 8 * i];
#pragma unroll
      for (int j = 0; j < DJ; ++j) acc[i][j] *= c;
    }
    for (int key = 0; key < n; ++key) {
      float p[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) p[i] = s[(tq + 8 * i) * (kKeyTile + 1) + key];
#pragma unroll
      for (int j = 0; j < DJ; ++j) {
        const int d = td + 16 * j;
        const float vv = d < head_dim ? v[key * dp + d] : 0.0f;
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[i][j] = fmaf(p[i], vv, acc[i][j]);
      }
    }
  }

  // Writes the normalized output: out(query_row, dim, value) for valid rows (decided by the
  // caller). A row that saw no visible key gets NaN: its token index was invalid.
  template <class Out>
  __device__ void finish(Out out) {
    __syncthreads();
    const int tq = threadIdx.x % 8;
    const int td = threadIdx.x / 8;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = tq + 8 * i;
      const float sum = l[row];
      const float inv = sum > 0.0f ? 1.0f / sum : __int_as_float(0x7fc00000);
#pragma unroll
      for (int j = 0; j < DJ; ++j) {
        const int d = td + 16 * j;
        if (d < head_dim) out(row, d, acc[i][j] * inv);
      }
    }
  }
};

// Lets `kernel` (instantiated for DJ) take the shared memory of head_dim = 16 * DJ.
template <int DJ, class Kernel>
cudaError_t allow_tile_smem(Kernel kernel) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(tile_smem_bytes(16 * DJ)));
}

}  // namespace moxin::cuda
