// The prefill/vision linear layer through cuBLASLt: bf16 activations x bf16 weights with f32
// accumulation and f32 output, the bias added in the epilogue. Plans (descriptors + the
// heuristic's algorithm) are cached per shape and pointer alignment, so a call after the
// first does no host-side search and allocates nothing (graph-capturable).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <tuple>

namespace moxin::cuda {

class LtGemm {
 public:
  explicit LtGemm(size_t workspace_bytes);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // y[m, n] (row-major f32) = a[m, k] (row-major bf16) * w[n, k]^T (bf16) + bias[n] (f32, or null)
  void run(const uint16_t* a, const uint16_t* w, const float* bias, float* y, int m, int n, int k,
           cudaStream_t stream);
  // The same with y as bf16, rounded to nearest even once from the f32 accumulators plus the
  // bias (bf16, or null: cuBLASLt on Hopper offers no bf16-output algorithm with an f32 bias).
  void run_bf16_out(const uint16_t* a, const uint16_t* w, const uint16_t* bias, uint16_t* y, int m, int n, int k,
                    cudaStream_t stream);
  // Whether run_bf16_out has an algorithm for this shape with 16-byte aligned a, y and bias and
  // the weights at w (the plan is made and cached now; nothing runs).
  bool offers_bf16_out(int m, int n, int k, const void* w, bool has_bias);
  // y[i, j] (row-major f32 [m, n]) = a_scale[i] w_scale[j] sum_k a[i, k] w[j, k], with a [m, k]
  // and w [n, k] row-major E4M3, on the FP8 tensor cores (f32 accumulation). cuBLASLt applies
  // the two scale vectors itself where it offers outer-vector scaling for the shape, else
  // scale_rows_columns does afterwards. Returns false, having enqueued nothing, where cuBLASLt
  // has no FP8 algorithm for the shape or the pointers are not 16-byte aligned.
  bool run_fp8(const uint8_t* a, const float* a_scale, const uint8_t* w, const float* w_scale, float* y, int m,
               int n, int k, cudaStream_t stream);
  // run_fp8 without the pass of scale_rows_columns: where cuBLASLt does not apply the scales
  // itself, y is left as sum_k a[i, k] w[j, k] for whatever reads it to scale; y is f32, or bf16
  // (y_bf16: rounded once from the f32 accumulators). nullopt where run_fp8 would return false (or
  // for bf16, n is not a multiple of 8), else whether y holds the scaled values.
  std::optional<bool> run_fp8_unscaled(const uint8_t* a, const float* a_scale, const uint8_t* w,
                                       const float* w_scale, void* y, bool y_bf16, int m, int n, int k,
                                       cudaStream_t stream);
  // Whether cuBLASLt applies run_fp8's two scale vectors itself for this shape and output type
  // (for benchmarks and tests).
  bool fp8_scales_in_epilogue(int m, int n, int k, bool out_bf16 = false);
  // Whether cuBLASLt has an FP8 algorithm for this shape and output type (run_fp8_unscaled then
  // runs given 16-byte aligned operands, k % 16 == 0 and n a multiple of 4, of 8 for bf16).
  bool fp8_usable(int m, int n, int k, bool out_bf16);

 private:
  struct Plan;
  // m, n, k, bias, the alignments of a, w, y and the bias, y as bf16
  using Key = std::tuple<int, int, int, bool, int, int, int, int, bool>;
  const Plan& plan(const Key& key);  // throws where cuBLASLt has no algorithm
  const Plan* find_plan(const Key& key);
  std::unique_ptr<Plan> make_plan(const Key& key);
  // run / run_bf16_out: y (f32, or bf16 where y_bf16) with the plan for this shape and alignment.
  void run_with_bias(const uint16_t* a, const uint16_t* w, const void* bias, void* y, bool y_bf16, int m, int n,
                     int k, cudaStream_t stream);
  // y = w * a with the plan's descriptors (beta 0, so C is D).
  void matmul(const Plan& p, const void* a, const void* w, void* y, cudaStream_t stream);
  const Plan& fp8_plan(int m, int n, int k, bool out_bf16);
  std::unique_ptr<Plan> try_fp8_plan(int m, int n, int k, bool outer_vector_scales, bool out_bf16);
  std::map<std::tuple<int, int, int, bool>, std::unique_ptr<Plan>> fp8_plans_;  // m, n, k, bf16 output

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<Key, std::unique_ptr<Plan>> plans_;
};

}  // namespace moxin::cuda
