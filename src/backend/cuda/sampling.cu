// Next-token sampling on the device (Backend::sample_tokens): one block of 1024 threads per
// logits row, the row held in shared memory, the host sampler's rules and order
// (runtime/sampler.hpp: penalty, greedy argmax, temperature, top-k, top-p, min-p, then the
// inverse CDF over the survivors in id order with the uniform number the host drew).
//
// Every filter leaves its survivors in place and marks the others, so no step sorts the
// vocabulary: top-k and the top-p cut are thresholds found by bisection over the bits of the
// values (each probe one block-wide count or sum), ties at a cut resolved in id order as the
// host does.
//
// Where the two samplers can differ: the weights exp(score - max) come from CUDA's expf (<= 2
// ulp) where the host uses the C library's, and sums run in another order (in double, as the
// host's). A choice changes only where the uniform number, or a token's mass at a top-p / min-p
// cut, lies within that rounding (~1e-7 of the mass) of a boundary. Tokens of equal weight
// but different score (scores within one ulp of each other after the exp) rank by id at the
// top-p cut, where the host ranks them by score.
#include <cfloat>
#include <climits>
#include <mutex>

#include "backend/cuda/kernels.hpp"
#include "backend/cuda/launch.cuh"

namespace moxin::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;  // == 32: one lane per warp in the second reduction stage
constexpr float kDroppedScore = -INFINITY;  // scores are finite once loaded: a free marker
constexpr float kDroppedWeight = -1.0f;     // weights are >= 0

// Shared-memory index of id i: a padding word per 32 ids keeps a thread's run of 32 ids
// (threads own contiguous runs, so that id order is thread order) free of bank conflicts.
__host__ __device__ constexpr int slot(int i) { return i + (i >> 5); }

// Orders floats as unsigned integers (larger value -> larger key); -0 is read as +0, as the
// host's float comparisons treat them.
__device__ __forceinline__ uint32_t order_key(float v) {
  const uint32_t bits = __float_as_uint(v + 0.0f);
  return bits & 0x80000000u ? ~bits : bits | 0x80000000u;
}
__device__ __forceinline__ float key_value(uint32_t key) {
  return __uint_as_float(key & 0x80000000u ? key & 0x7fffffffu : ~key);
}

struct Sum {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};
struct Min {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a < b ? a : b; }
};

// Every thread gets the same result (butterflies add a + b and b + a: bit-identical), so the
// block can branch on it uniformly. `scratch`: one value per warp.
template <typename T, typename Op>
__device__ T block_reduce(T v, T* scratch, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  __syncthreads();  // the previous use of scratch is over
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  v = scratch[threadIdx.x % 32];
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum of v over the threads before this one (thread order = id order).
template <typename T>
__device__ T block_exclusive_sum(T v, T* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  T inclusive = v;
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    const T other = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  T exclusive = __shfl_up_sync(0xffffffffu, inclusive, 1);
  if (lane == 0) exclusive = T(0);
  __syncthreads();
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  T warps_inclusive = scratch[lane];
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    const T other = __shfl_up_sync(0xffffffffu, warps_inclusive, offset);
    if (lane >= offset) warps_inclusive += other;
  }
  T warps_exclusive = __shfl_up_sync(0xffffffffu, warps_inclusive, 1);
  if (lane == 0) warps_exclusive = T(0);
  return __shfl_sync(0xffffffffu, warps_exclusive, warp) + exclusive;
}

struct Scratch {
  double d[kWarps];
  float f[kWarps];
  int i[kWarps];
};

// This thread's ids: [first, last).
struct Run {
  int first, last;
};

// The largest key K with at least k scores >= K: the k-th largest score's key.
__device__ uint32_t kth_largest_key(const float* s, Run run, int k, Scratch& scratch) {
  uint32_t lo = 0, hi = 0xffffffffu;
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo) / 2 + 1;
    int count = 0;
    for (int i = run.first; i < run.last; ++i) count += order_key(s[slot(i)]) >= mid ? 1 : 0;
    if (block_reduce(count, scratch.i, Sum{}) >= k) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Probability of a weight as the host's top-p computes it: float(w / total).
__device__ __forceinline__ float probability(float w, double total) {
  return static_cast<float>(static_cast<double>(w) / total);
}

// Sum of the probabilities of the surviving weights above `bits` (weights are >= 0, so their
// bit patterns order like their values).
__device__ double mass_above(const float* w, Run run, uint32_t bits, double total, Scratch& scratch) {
  double mass = 0;
  for (int i = run.first; i < run.last; ++i) {
    const float v = w[slot(i)];
    if (v >= 0.0f && __float_as_uint(v) > bits) mass += probability(v, total);
  }
  return block_reduce(mass, scratch.d, Sum{});
}

// transformers' top-p: in rank order (weight descending, id ascending among equals) a token is
// kept if it is the first or if the probability mass from it downwards exceeds 1 - top_p; the
// kept tokens are a prefix of the ranking. The cut's weight is found by bisection over its bits.
__device__ void keep_top_p(float* w, Run run, double total, float top_p, Scratch& scratch) {
  double local = 0;
  for (int i = run.first; i < run.last; ++i)
    if (w[slot(i)] >= 0.0f) local += probability(w[slot(i)], total);
  const double total_p = block_reduce(local, scratch.d, Sum{});
  const auto threshold = static_cast<float>(1.0 - static_cast<double>(top_p));
  const auto kept_below = [&](double mass) { return mass == 0.0 || static_cast<float>(total_p - mass) > threshold; };

  // Smallest bit pattern whose mass above still keeps a token there; 1.0f is the top weight.
  uint32_t lo = 0, hi = __float_as_uint(1.0f);
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo) / 2;
    if (kept_below(mass_above(w, run, mid, total, scratch))) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  // The cut weight: the smallest surviving weight at or above that pattern.
  float least = FLT_MAX;
  int ties = 0;
  for (int i = run.first; i < run.last; ++i) {
    const float v = w[slot(i)];
    if (v >= 0.0f && __float_as_uint(v) >= lo) least = fminf(least, v);
  }
  const float cut = block_reduce(least, scratch.f, Min{});
  for (int i = run.first; i < run.last; ++i) ties += w[slot(i)] == cut ? 1 : 0;
  const int tie_count = block_reduce(ties, scratch.i, Sum{});
  // Equal weights at the cut are kept in id order while the mass from each one down is large
  // enough (the first always is); the host adds the mass above one token at a time.
  const double above = mass_above(w, run, __float_as_uint(cut), total, scratch);
  const float p = probability(cut, total);
  int keep_ties = 1;
  for (double mass = above + p; keep_ties < tie_count && kept_below(mass); mass += p) ++keep_ties;
  int rank = block_exclusive_sum(ties, scratch.i);
  for (int i = run.first; i < run.last; ++i) {
    float& v = w[slot(i)];
    if (v == cut) {
      if (rank++ >= keep_ties) v = kDroppedWeight;
    } else if (v < cut) {
      v = kDroppedWeight;
    }
  }
}

// Fills ids[row] with the drawn token, or -1 where a score is not finite (as loaded, or after
// the penalty or the temperature): the host then samples the row and names the problem.
__global__ void __launch_bounds__(kThreads, 1)
    sample_rows_kernel(const float* __restrict__ logits, int vocab, int run_length,
                       const TokenDrawParams* __restrict__ draws, const int32_t* __restrict__ penalized,
                       int32_t* __restrict__ ids) {
  extern __shared__ float row[];  // scores, then weights (slot(i) for id i)
  __shared__ Scratch scratch;
  const TokenDrawParams d = draws[blockIdx.x];
  const float* x = logits + static_cast<size_t>(blockIdx.x) * vocab;
  const int first = min(static_cast<int>(threadIdx.x) * run_length, vocab);
  const Run run{first, min(first + run_length, vocab)};

  bool bad = false;
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    const float v = x[i];
    bad |= !isfinite(v);
    row[slot(i)] = v;
  }
  if (__syncthreads_or(bad)) {
    if (threadIdx.x == 0) ids[blockIdx.x] = -1;
    return;
  }
  if (d.repetition_penalty != 1.0f) {  // distinct ids: no two threads touch one slot
    for (int j = threadIdx.x; j < d.penalized_count; j += kThreads) {
      float& s = row[slot(penalized[d.penalized_offset + j])];
      s = s < 0 ? s * d.repetition_penalty : s / d.repetition_penalty;
      bad |= !isfinite(s);
    }
    if (__syncthreads_or(bad)) {
      if (threadIdx.x == 0) ids[blockIdx.x] = -1;
      return;
    }
  }

  if (d.temperature == 0.0f) {  // argmax, the lowest id among equal scores
    float best = -INFINITY;
    int best_id = INT_MAX;
    for (int i = run.first; i < run.last; ++i) {
      if (row[slot(i)] > best) {
        best = row[slot(i)];
        best_id = i;
      }
    }
    const float top = block_reduce(best, scratch.f, Max{});
    const int id = block_reduce(best == top ? best_id : INT_MAX, scratch.i, Min{});
    if (threadIdx.x == 0) ids[blockIdx.x] = id;
    return;
  }

  if (d.temperature != 1.0f) {
    for (int i = run.first; i < run.last; ++i) {
      float& s = row[slot(i)];
      s /= d.temperature;
      bad |= !isfinite(s);
    }
  }
  if (__syncthreads_or(bad)) {  // also orders the writes above before other threads' reads
    if (threadIdx.x == 0) ids[blockIdx.x] = -1;
    return;
  }

  if (d.top_k > 0 && d.top_k < vocab) {  // every score >= the k-th largest survives (ties too)
    const float kth = key_value(kth_largest_key(row, run, d.top_k, scratch));
    for (int i = run.first; i < run.last; ++i)
      if (row[slot(i)] < kth) row[slot(i)] = kDroppedScore;
  }
  float local_max = -INFINITY;
  for (int i = run.first; i < run.last; ++i) local_max = fmaxf(local_max, row[slot(i)]);
  const float max_score = block_reduce(local_max, scratch.f, Max{});
  double local_total = 0;
  for (int i = run.first; i < run.last; ++i) {
    float& v = row[slot(i)];
    v = v == kDroppedScore ? kDroppedWeight : expf(v - max_score);
    if (v >= 0.0f) local_total += v;
  }
  double total = block_reduce(local_total, scratch.d, Sum{});

  if (d.top_p < 1.0f) {
    keep_top_p(row, run, total, d.top_p, scratch);
    local_total = 0;
    for (int i = run.first; i < run.last; ++i)
      if (row[slot(i)] >= 0.0f) local_total += row[slot(i)];
    total = block_reduce(local_total, scratch.d, Sum{});
  }
  if (d.min_p > 0.0f) {  // the top weight is exp(0) = 1, so the largest probability is 1 / total
    const float threshold = d.min_p * static_cast<float>(1.0 / total);
    local_total = 0;
    for (int i = run.first; i < run.last; ++i) {
      float& v = row[slot(i)];
      if (v >= 0.0f && probability(v, total) < threshold) v = kDroppedWeight;
      if (v >= 0.0f) local_total += v;
    }
    total = block_reduce(local_total, scratch.d, Sum{});
  }

  // Inverse CDF in id order; the last survivor takes the target if rounding left it past the sum.
  const double target = d.uniform * total;
  double mine = 0;
  int last_survivor = -1;
  for (int i = run.first; i < run.last; ++i) {
    if (row[slot(i)] < 0.0f) continue;
    mine += row[slot(i)];
    last_survivor = i;
  }
  double cumulative = block_exclusive_sum(mine, scratch.d);
  int found = INT_MAX;
  for (int i = run.first; i < run.last && found == INT_MAX; ++i) {
    if (row[slot(i)] < 0.0f) continue;
    cumulative += row[slot(i)];
    if (target < cumulative) found = i;
  }
  found = block_reduce(found, scratch.i, Min{});
  last_survivor = block_reduce(last_survivor, scratch.i, Max{});
  if (threadIdx.x == 0) ids[blockIdx.x] = found == INT_MAX ? last_survivor : found;
}

// Ids per thread: runs of 32 (conflict-free with the padding) as long as 1024 of them cover
// the vocabulary.
int run_length(int vocab) { return 32 * ((vocab + 32 * kThreads - 1) / (32 * kThreads)); }

size_t sample_rows_smem_bytes(int vocab) { return static_cast<size_t>(slot(vocab - 1) + 1) * sizeof(float); }

}  // namespace

bool sample_rows_supported(int vocab) {
  static int max_bytes = [] {
    int device = 0, bytes = 0;
    MOXIN_CUDA_CHECK(cudaGetDevice(&device));
    MOXIN_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    // Static shared memory of the kernel comes out of the same budget.
    return bytes - static_cast<int>(sizeof(Scratch));
  }();
  return vocab > 0 && sample_rows_smem_bytes(vocab) <= static_cast<size_t>(max_bytes);
}

void sample_rows(const float* logits, int rows, int vocab, const TokenDrawParams* draws,
                 const int32_t* penalized, int32_t* ids, cudaStream_t stream) {
  static std::once_flag attributes;
  std::call_once(attributes, [] {
    int device = 0, bytes = 0;
    MOXIN_CUDA_CHECK(cudaGetDevice(&device));
    MOXIN_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    MOXIN_CUDA_CHECK(cudaFuncSetAttribute(sample_rows_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          bytes - static_cast<int>(sizeof(Scratch))));
  });
  launch_kernel("sample_rows", sample_rows_kernel, dim3(static_cast<unsigned>(rows)), dim3(kThreads),
                sample_rows_smem_bytes(vocab), stream, logits, vocab, run_length(vocab), draws, penalized, ids);
}

}  // namespace moxin::cuda
