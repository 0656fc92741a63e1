// Launchers of the CUDA backend's kernels. Every launcher enqueues on `stream`, allocates
// nothing and checks the launch; shapes were validated by the caller (cuda_backend.cpp).
// bf16 data is passed as raw 16-bit words so this header needs no CUDA types beyond the stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moxin::cuda {

using bf16_bits = uint16_t;

// Per-token E4M3 activations, the input an FP8 linear's tensor cores multiply at prefill rows
// (Backend::linear_input_dtype F8_E4M3): codes [rows, cols] and one f32 scale per row, each value
// rounded to bf16, then coded under amax / 448 of its row (e4m3_rows.cuh).
struct E4M3Rows {
  uint8_t* codes = nullptr;
  float* scales = nullptr;
};

// The output of an op that feeds a linear: f32, or bf16 (exactly one is set) where the linear
// multiplies bf16 activations anyway (Backend::linear_input_dtype), rounded as
// activations_to_bf16 rounds, so the linear needs no conversion pass of its own; or, for the ops
// whose blocks see whole rows (the RMSNorms, the swiglu), per-token E4M3 codes for an FP8 linear,
// the codes and scales quantize_rows_e4m3 would give from the bf16 output.
struct Activations {
  float* f32 = nullptr;
  bf16_bits* bf16 = nullptr;
  E4M3Rows e4m3 = {};
  Activations rows_from(int64_t row, int64_t cols) const {
    return {f32 ? f32 + row * cols : nullptr, bf16 ? bf16 + row * cols : nullptr,
            e4m3.codes ? E4M3Rows{e4m3.codes + row * cols, e4m3.scales + row} : E4M3Rows{}};
  }
};
// The input of a linear that may come in any of those kinds (exactly one set).
struct InputActivations {
  const float* f32 = nullptr;
  const bf16_bits* bf16 = nullptr;
  const uint8_t* e4m3_codes = nullptr;
  const float* e4m3_scales = nullptr;
  InputActivations rows_from(int64_t row, int64_t cols) const {
    return {f32 ? f32 + row * cols : nullptr, bf16 ? bf16 + row * cols : nullptr,
            e4m3_codes ? e4m3_codes + row * cols : nullptr, e4m3_scales ? e4m3_scales + row : nullptr};
  }
};

// What a decode linear does around its product, in the same kernel (each gives the bits of the
// separate ops): norm_weight set: x is the residual stream and the linear multiplies
// rms_norm(x, norm_weight, norm_eps) (as rms_norm rounds it); accumulate: y += the product (the
// residual add after o_proj and down_proj). A decoder layer at batch 1 then runs two kernels
// fewer: no add_rms_norm between the linears.
struct LinearFusion {
  const float* norm_weight = nullptr;
  float norm_eps = 0.0f;
  bool accumulate = false;
};

// --- gemv.cu: y[M, N] = x[M, K] W[N, K]^T (+ bias), 1 <= M <= kGemvMaxRows, f32 activations ---
constexpr int kGemvMaxRows = 8;
constexpr int kFusedGemvMaxRows = 2;  // rows the fused forms (LinearFusion) take
// A norm-in GEMV keeps its block's normalized rows (m x k f32) in 44 KB of shared memory (with
// its static shared memory, inside the 48 KB a block gets without opting in).
constexpr int64_t kFusedGemvMaxNormedFloats = 11 * 1024;
void gemv_bf16(const float* x, int m, const bf16_bits* w, const float* bias, float* y, int n, int k,
               cudaStream_t stream, const LinearFusion& fusion = {});
// y[M, n] = swiglu(x W^T (+ bias)) for W = gate | up [2 n, K] in one pass: the bits of gemv_bf16
// followed by swiglu. Needs K % 8 == 0 and 16-byte aligned x and W.
bool gemv_bf16_swiglu_usable(const float* x, const bf16_bits* w, int m, int k);
void gemv_bf16_swiglu(const float* x, int m, const bf16_bits* w, const float* bias, float* y, int n, int k,
                      cudaStream_t stream, const LinearFusion& fusion = {});
// Whether gemv_bf16 (gated: gemv_bf16_swiglu) takes this fusion at m rows of k inputs: 1..
// kFusedGemvMaxRows rows, the vector path, a 16-byte aligned norm weight and m x k f32 in 44 KB
// of shared memory; a norm and an accumulated output not both, and no gated accumulation.
bool gemv_bf16_fusable(const float* x, const bf16_bits* w, int m, int k, bool gated, const LinearFusion& fusion);

// --- gemm_skinny.cu: the same product on the tensor cores for 1 <= M <= kSkinnyMaxRows ---
// x rounded to bf16 (as the cuBLASLt path does), f32 sums added in a fixed order (the result
// of a row does not depend on the other rows). Needs K % 8 == 0 and 16-byte aligned x and W.
constexpr int kSkinnyMaxRows = 64;
bool skinny_gemm_usable(const float* x, const bf16_bits* w, int m, int k);
void skinny_gemm_bf16(const float* x, int m, const bf16_bits* w, const float* bias, float* y, int n,
                      int k, cudaStream_t stream);
// One explicit tiling (weight row tiles of 16 per block: 1 or 2; chunks of loads in flight per
// warp: 1, 2 or 4) for the benchmark's sweep; false when not compiled or not usable.
bool skinny_gemm_variant(int row_tiles, int unroll, const float* x, int m, const bf16_bits* w,
                         const float* bias, float* y, int n, int k, cudaStream_t stream);

// --- sampling.cu: one token per logits row (Backend::sample_tokens, runtime/sampler.hpp's rules) ---
struct TokenDrawParams {
  float temperature;  // 0: greedy
  float top_p, min_p, repetition_penalty;
  int top_k;
  int penalized_offset, penalized_count;  // this row's ids in the `penalized` array
  int unused;                             // keeps `uniform` 8-byte aligned on every host
  double uniform;
};
// Whether a row of this many scores fits the kernel's shared memory (~55k on an H100/H200).
bool sample_rows_supported(int vocab);
// ids[r] = the token drawn from row r of logits [rows, vocab], or -1 for a non-finite score.
void sample_rows(const float* logits, int rows, int vocab, const TokenDrawParams* draws,
                 const int32_t* penalized, int32_t* ids, cudaStream_t stream);

// --- quant_*.cu: linears with MLX affine-quantized weights (docs/model.md section 5) ---
// Codes as in the file (uint32 words, `bits`-bit codes little-endian, [rows, cols * bits / 32]);
// scale and bias of each group interleaved at upload: bf16 pairs (scale in the low half) when
// the checkpoint holds bf16, else f32 pairs.
struct QuantMatrix {
  const uint32_t* codes = nullptr;
  const void* scale_bias = nullptr;  // [rows, cols / group_size] pairs
  bool f32_scales = false;
  int bits = 0;
  int group_size = 0;
  int rows = 0;
  int cols = 0;
};
// y[M, N] = x[M, K] W^T with f32 activations for 1 <= M <= kQuantGemvMaxRows: equals an f32
// matmul on the dequantized weights up to f32 rounding; requires |x| < 2^48 (see quant_gemv.cu).
// From 3 rows on the tensor-core kernel is faster (H100/H200 runs 3-4, docs/cuda-notes.md).
constexpr int kQuantGemvMaxRows = 2;
void quant_gemv(const float* x, int m, const QuantMatrix& w, float* y, cudaStream_t stream);
// quant_gemv of one activation row by a 4- or 8-bit gate | up matrix ([2 n, K]) into y [n] =
// silu(gate) * up: one launch with the bits of quant_gemv then swiglu (the same kernel and
// tiling, rows paired). Only where quant_gemv_swiglu_usable (an even row count, quant_gemv's
// shape rules).
bool quant_gemv_swiglu_usable(const float* x, const QuantMatrix& w);
void quant_gemv_swiglu(const float* x, const QuantMatrix& w, float* y, cudaStream_t stream);
// The benchmark's tiling sweep at M = 1: weight rows per warp, warps per row group (K split)
// and blocks per SM the registers must allow; false when that variant is not compiled.
bool quant_gemv_variant(int rows_per_warp, int k_split, int min_blocks, const float* x,
                        const QuantMatrix& w, float* y, cudaStream_t stream);
// out[N, K] = bf16(fma(scale, code, bias)) computed in f32 (the prefill path's weights).
void quant_dequantize_bf16(const QuantMatrix& w, bf16_bits* out, cudaStream_t stream);
// y[M, N] = x[M, K] W^T for M <= kQuantMmaMaxRows on the tensor cores: x rounded to bf16 (into
// x_scratch, quant_mma_scratch_elems of them), weights dequantized to bf16 as
// quant_dequantize_bf16 does, f32 accumulation; the order of the f32 additions may vary.
constexpr int kQuantMmaMaxRows = 64;
constexpr int64_t quant_mma_scratch_elems(int64_t m, int64_t k) { return m * ((k + 127) / 128 * 128); }
void quant_mma(const float* x, int m, const QuantMatrix& w, bf16_bits* x_scratch, float* y,
               cudaStream_t stream);

// --- fp8_linear.cu: FP8 E4M3 weights, one f32 scale per output row (docs/model.md section 5) ---
struct Fp8Matrix {
  const uint8_t* codes = nullptr;  // [rows, cols] E4M3
  const float* scales = nullptr;   // [rows]
  int rows = 0;
  int cols = 0;
};
// y[M, N] = (x[M, K] codes^T) * scales for 1 <= M <= kFp8GemvMaxRows: the codes widened exactly
// (E4M3 -> f16 -> f32), f32 products and sums, the row's scale applied to the sum. 16-byte code
// loads where K % 16 == 0 and x is 16-byte aligned, else one code per lane per step.
constexpr int kFp8GemvMaxRows = 8;
void fp8_gemv(const float* x, int m, const Fp8Matrix& w, float* y, cudaStream_t stream);
// One explicit tiling (rows per warp, steps of 16-byte loads in flight per lane, K slices) at
// M = 1 or 8 for the benchmark's sweep; false when not compiled or not usable.
bool fp8_gemv_variant(int rows_per_warp, int unroll, int slices, const float* x, int m, const Fp8Matrix& w,
                      float* y, cudaStream_t stream);
// y[M, N] = (x[M, K] codes^T) * scales for kFp8MmaMinRows <= M <= kQuantMmaMaxRows and K % 64 == 0
// on the tensor cores (quant_mma.cu's kernel): x rounded to bf16 (into x_scratch,
// quant_mma_scratch_elems of them), the codes widened exactly, f32 accumulation, the row's scale
// on each partial sum; the order of the f32 additions may vary.
constexpr int kFp8MmaMinRows = 3;
void fp8_mma(const float* x, int m, const Fp8Matrix& w, bf16_bits* x_scratch, float* y, cudaStream_t stream);
// out[N, K] = the codes as bf16 (exact: every E4M3 value is a bf16 value), for the cuBLASLt path.
void fp8_codes_to_bf16(const Fp8Matrix& w, bf16_bits* out, cudaStream_t stream);
// y[r, c] *= row_scales[r] * col_scales[c] for a [rows, cols] y (row_scales may be null: 1): the
// scales after a GEMM on the codes.
void scale_rows_columns(float* y, const float* row_scales, const float* col_scales, int64_t rows, int64_t cols,
                        cudaStream_t stream);
// Per-token activations for the FP8 tensor cores, from x [rows, k] rounded to bf16 as every
// prefill GEMM's input is (so an f32 x and its bf16 rounding give the same codes, and the norm,
// SwiGLU or attention before the linear writes half the bytes): with b = bf16(x[r, c]),
// scales[r] = amax |b| / 448 (1 where that is 0), codes[r, c] = E4M3(b / scales[r]) rounded to
// nearest even, saturating.
void quantize_rows_e4m3(InputActivations x, int64_t rows, int k, uint8_t* codes, float* scales, cudaStream_t stream);

// --- convert.cu ---
void activations_to_bf16(const float* x, bf16_bits* y, int64_t count, cudaStream_t stream);
// Rows [row_begin, row_begin + rows) of the im2col matrix of NHWC f32 images: one row per
// patch (image-major, then patch rows, then patch cols), columns ordered (channel, ky, kx)
// like a PyTorch conv weight [out, 3, p, p].
void im2col_bf16(const float* images, int height, int width, int patch, int64_t row_begin,
                 int64_t rows, bf16_bits* out, cudaStream_t stream);

// --- elementwise.cu ---
void gelu_erf(const float* x, Activations y, int64_t count, cudaStream_t stream);
// y[r, c] = silu(gate_up[r, c]) * gate_up[r, cols + c]: rows of gate_up are gate | up.
void swiglu(const float* gate_up, Activations y, int64_t rows, int64_t cols, cudaStream_t stream);
// swiglu of an FP8 GEMM's gate | up left unscaled (LtGemm::run_fp8_unscaled), f32 or bf16:
// element (r, c) times row_scales[r] * col_scales[c] first, as scale_rows_columns would write it
// (for f32, the same bits as that pass then swiglu, without the pass over the layer's largest
// activation).
void swiglu_scaled(InputActivations gate_up, const float* row_scales, const float* col_scales, Activations y,
                   int64_t rows, int64_t cols, cudaStream_t stream);
// The same from a bf16 gate_up (a prefill GEMM's output rounded to bf16: half the bytes).
void swiglu_bf16_input(const bf16_bits* gate_up, Activations y, int64_t rows, int64_t cols, cudaStream_t stream);
void add(float* x, const float* y, int64_t count, cudaStream_t stream);
void add_scaled(float* x, const float* y, const float* scale, int64_t rows, int64_t cols,
                cudaStream_t stream);
void add_rows_cyclic(float* x, const float* table, int64_t rows, int64_t cols, int64_t table_rows,
                     cudaStream_t stream);
// y[i] = x[rows[i]]; an index outside [0, x_rows) yields a NaN row (no host check possible).
void gather_rows(const float* x, int64_t x_rows, int64_t cols, const int32_t* rows, int64_t count,
                 float* y, cudaStream_t stream);
// y[i] = f32(table[id]), id = ids[i], or drawn[sources[i]] where sources (may be null) holds an
// index >= 0 (DrawnTokens); an id outside [0, vocab) yields a NaN row.
void embedding(const int32_t* ids, const int32_t* sources, const int32_t* drawn, int64_t count,
               const bf16_bits* table, int64_t vocab, int64_t cols, float* y, cudaStream_t stream);

// --- norm.cu ---
void layer_norm(const float* x, const float* w, const float* b, float eps, Activations y, int64_t rows,
                int64_t cols, cudaStream_t stream);
// x += y (scale non-null: x += scale[c] * y, as add_scaled), then out = layer_norm(x), rounded as
// those two ops; out overlaps neither x nor y.
void add_layer_norm(float* x, const float* y, const float* scale, const float* w, const float* b, float eps,
                    Activations out, int64_t rows, int64_t cols, cudaStream_t stream);
void rms_norm(const float* x, const float* w, float eps, Activations y, int64_t rows, int64_t cols,
              cudaStream_t stream);
// x += y, then out = rms_norm(x), rounded as those two ops; out overlaps neither x nor y. With
// col_scales (row_scales: a [rows] vector, both set) each y value is first multiplied by
// row_scales[r] * col_scales[c], as scale_rows_columns would (an FP8 GEMM's unscaled products).
void add_rms_norm(float* x, const float* y, const float* w, float eps, Activations out, int64_t rows,
                  int64_t cols, cudaStream_t stream, const float* row_scales = nullptr,
                  const float* col_scales = nullptr);

// --- the paged KV cache and a batch's token positions, as the kernels see them ---

// A layer's paged K and V: [num_blocks, block_size, kv_heads, head_dim] bf16 each, or, for an
// FP8 cache (KvCacheDType::Fp8E4M3, k and v null), E4M3 codes in k8 and v8 in the same layout
// plus one exponent byte per (slot, kv head) row in k_exp and v_exp ([num_blocks, block_size,
// kv_heads]): the row's values are e4m3(code) * 2^exp (core/fp8_kv.hpp; fp8_kv.cuh on the GPU).
// The exponent of the row whose first element sits at offset o is at o / head_dim.
struct PagedLayer {
  bf16_bits* k = nullptr;
  bf16_bits* v = nullptr;
  int num_blocks = 0;
  int block_size = 0;
  int kv_heads = 0;
  int head_dim = 0;
  uint8_t* k8 = nullptr;
  uint8_t* v8 = nullptr;
  int8_t* k_exp = nullptr;
  int8_t* v_exp = nullptr;
};

// Where each of `tokens` tokens sits (AttentionBatch on the device).
struct TokenIndex {
  const int32_t* token_seq = nullptr;
  const int32_t* token_pos = nullptr;
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks]
  int tokens = 0;
  int num_seqs = 0;
  int max_blocks = 0;
};

// --- rope_kv.cu ---
// qkv [tokens, (q_heads + 2 kv_heads) * head_dim] (q | k | v): rotate-half RoPE at `positions`
// of q into q [tokens, q_heads * head_dim] and of k into the cache, v copied there (bf16, or
// each row quantized to the FP8 row format where the cache is FP8).
// Slots whose block id is outside the cache are skipped (the runtime owns table validity);
// head_dim <= kMaxHeadDim.
// With `scales`, qkv holds an FP8 GEMM's unscaled products: each value times rows[token] *
// columns[col] first, as scale_rows_columns would have written it (the same bits).
struct QkvScales {
  const float* rows = nullptr;
  const float* columns = nullptr;
};
void rope_kv_write(const float* qkv, const int32_t* positions, int q_heads, float theta, float* q,
                   const PagedLayer& cache, const TokenIndex& index, cudaStream_t stream, QkvScales scales = {});

// --- vit_attention.cu ---
constexpr int kMaxHeadDim = 128;
// tensor_cores: Q, K, V and P rounded to bf16 for mma.sync (f32 accumulation and softmax);
// otherwise all f32 on the CUDA cores. qkv is qkv_f32, or (tensor cores only) qkv_bf16 where the
// projection wrote it rounded: the same bits as rounding the f32 one.
void vit_attention(const float* qkv_f32, const bf16_bits* qkv_bf16, int batch, int tokens, int heads, int head_dim,
                   bool tensor_cores, Activations y, cudaStream_t stream);

// --- paged_attention_split.cu: one token per block group, context split across blocks ---
// Each token's context (its position + 1) is dealt to up to `splits` blocks, none taking fewer
// than kMinPositionsPerSplit positions (a graph captured with splits for a longer context runs a
// short one as an eager launch would: the blocks left over are empty). When splits > 1:
// `partial` holds tokens * q_heads * splits * (head_dim + 2) floats and `counters`
// tokens * kv_heads zeroed ints (left zeroed after the call).
constexpr int kMinPositionsPerSplit = 128;
void paged_attention_split(const float* q, const PagedLayer& cache, const TokenIndex& index,
                           int q_heads, int splits, float* partial, int* counters, float* y,
                           cudaStream_t stream);

// Same contract, warps walking their positions with K and V in registers and no block barrier
// (the short chain batch-1 decode needs). Only where paged_attention_warp_fits(q_heads /
// kv_heads, head_dim). cluster_merge: where the splits fit one thread block cluster they merge
// through its shared memory (partial and counters untouched), else through global memory.
bool paged_attention_warp_fits(int group, int head_dim);
void paged_attention_warp(const float* q, const PagedLayer& cache, const TokenIndex& index,
                          int q_heads, int splits, bool cluster_merge, float* partial,
                          int* counters, float* y, cudaStream_t stream);

// --- paged_attention_mma.cu: the same contract on tensor cores, K/V tiles streamed per warp ---
// At the f32 kernels' accuracy (q and p carried as bf16 pairs). Only where
// paged_attention_mma_fits(q_heads / kv_heads, head_dim).
bool paged_attention_mma_fits(int group, int head_dim);
void paged_attention_mma(const float* q, const PagedLayer& cache, const TokenIndex& index,
                         int q_heads, int splits, bool cluster_merge, float* partial, int* counters,
                         float* y, cudaStream_t stream);

// The inverse frequencies of a head's rotary pairs (core/rope_frequency.hpp), computed on the host
// once per theta and head_dim (kept per thread: every layer asks for the same) and passed by value.
struct RopeFrequencies {
  float inv[kMaxHeadDim / 2];
};
const RopeFrequencies& rope_frequencies(float theta, int head_dim);

// rope_kv_write's input: the packed q | k | v rows, the rotation positions, the frequencies.
struct DecodeRope {
  const float* qkv = nullptr;
  const int32_t* positions = nullptr;
  RopeFrequencies frequencies{};
};
// rope_kv_write then paged_attention_mma in one launch, for a decode step over a bf16 cache:
// every token is the only one of its sequence in the batch (AttentionBatch::one_token_per_sequence),
// so a token's new K/V row is read by its own blocks only. Each block rotates its GQA group's q
// itself, and the block whose split holds the token's position writes that token's rotated k and
// its v (its kv head's part of the row) before its warps stage any tile. q is not written. The same
// bits as the two ops (the same rotation code, tests compare them).
void rope_paged_attention_mma(const DecodeRope& rope, const PagedLayer& cache, const TokenIndex& index, int q_heads,
                              int splits, bool cluster_merge, float* partial, int* counters, float* y,
                              cudaStream_t stream);

// --- paged_attention_tiled.cu: tiles of consecutive tokens share K/V tiles (prefill) ---
// tensor_cores: Q and P rounded to bf16 for mma.sync; otherwise all f32 on the CUDA cores.
void paged_attention_tiled(const float* q, const PagedLayer& cache, const TokenIndex& index,
                           int q_heads, bool tensor_cores, Activations y, cudaStream_t stream);

// Raise the dynamic shared-memory limit of the tiled kernels (> 48 KB): called once at backend
// creation, so that no attribute call happens inside a graph capture.
void configure_vit_attention();
void configure_paged_attention();
void configure_paged_attention_split();
void configure_paged_attention_mma();
int paged_attention_max_splits();

}  // namespace moxin::cuda
