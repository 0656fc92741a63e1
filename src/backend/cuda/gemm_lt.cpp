#include "backend/cuda/gemm_lt.hpp"

#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/kernels.hpp"

namespace moxin::cuda {

// cuBLASLt is column-major: the row-major y[m, n] is the column-major D[n, m], and
// D = A^T * B with A = w seen as a column-major [k, n] matrix and B = a seen as a
// column-major [k, m] matrix (leading dimensions k, k and n).
struct LtGemm::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool usable = true;                 // false: an FP8 shape cuBLASLt has no algorithm for
  bool outer_vector_scales = false;   // FP8: cuBLASLt applies the per-row and per-column scales
  ~Plan() {
    if (desc) cublasLtMatmulDescDestroy(desc);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (d) cublasLtMatrixLayoutDestroy(d);
  }
};

namespace {

// Largest power of two (<= 16) that divides the address: cuBLASLt kernels need to know it.
int alignment(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  int a = 16;
  while (a > 1 && v % a != 0) a /= 2;
  return a;
}

}  // namespace

LtGemm::LtGemm(size_t workspace_bytes) : workspace_bytes_(workspace_bytes) {
  MOXIN_CUBLAS_CHECK(cublasLtCreate(&handle_));
  MOXIN_CUDA_CHECK(cudaMalloc(&workspace_, workspace_bytes_));
}

LtGemm::~LtGemm() {
  plans_.clear();
  fp8_plans_.clear();
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(handle_);
}

// The plan for `key`, or nullptr where cuBLASLt offers no algorithm for it (cached either way).
const LtGemm::Plan* LtGemm::find_plan(const Key& key) {
  auto found = plans_.find(key);
  if (found == plans_.end()) found = plans_.emplace(key, make_plan(key)).first;
  return found->second.get();
}

const LtGemm::Plan& LtGemm::plan(const Key& key) {
  const Plan* p = find_plan(key);
  const auto [m, n, k, has_bias, align_a, align_w, align_y, align_bias, out_bf16] = key;
  MOXIN_CHECK(p != nullptr, "[cuda] cuBLASLt has no bf16 GEMM algorithm for m=", m, " n=", n, " k=", k,
              has_bias ? " with a bias" : "", out_bf16 ? " (bf16 output)" : "");
  return *p;
}

std::unique_ptr<LtGemm::Plan> LtGemm::make_plan(const Key& key) {
  const auto [m, n, k, has_bias, align_a, align_w, align_y, align_bias, out_bf16] = key;
  auto p = std::make_unique<Plan>();
  MOXIN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t transpose = CUBLAS_OP_T, keep = CUBLAS_OP_N;
  MOXIN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA,
                                                    &transpose, sizeof(transpose)));
  MOXIN_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &keep, sizeof(keep)));
  const cublasLtEpilogue_t epilogue = has_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  MOXIN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                    &epilogue, sizeof(epilogue)));
  // The bias is added to the f32 accumulators before any rounding; its type follows the output's
  // (H200, CUDA 13: no bf16-output algorithm takes an f32 bias).
  if (has_bias) {
    const cudaDataType_t bias_type = out_bf16 ? CUDA_R_16BF : CUDA_R_32F;
    if (cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                       sizeof(bias_type)) != CUBLAS_STATUS_SUCCESS)
      return nullptr;
  }
  MOXIN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, k, n, k));
  MOXIN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, k, m, k));
  MOXIN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->d, out_bf16 ? CUDA_R_16BF : CUDA_R_32F, n, m, n));

  cublasLtMatmulPreference_t pref = nullptr;
  MOXIN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = workspace_bytes_;
  const uint32_t aw = static_cast<uint32_t>(align_w), aa = static_cast<uint32_t>(align_a),
                 ay = static_cast<uint32_t>(align_y);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                       sizeof(ws));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aw,
                                       sizeof(aw));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &aa,
                                       sizeof(aa));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ay,
                                       sizeof(ay));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ay,
                                       sizeof(ay));
  (void)align_bias;  // part of the key: the epilogue's vector loads depend on it
  cublasLtMatmulHeuristicResult_t result{};
  int found_count = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      handle_, p->desc, p->a, p->b, p->d, p->d, pref, 1, &result, &found_count);
  cublasLtMatmulPreferenceDestroy(pref);
  if (status != CUBLAS_STATUS_SUCCESS || found_count == 0) return nullptr;
  p->algo = result.algo;
  return p;
}

void LtGemm::run(const uint16_t* a, const uint16_t* w, const float* bias, float* y, int m, int n,
                 int k, cudaStream_t stream) {
  run_with_bias(a, w, bias, y, false, m, n, k, stream);
}

void LtGemm::run_bf16_out(const uint16_t* a, const uint16_t* w, const uint16_t* bias, uint16_t* y, int m, int n,
                          int k, cudaStream_t stream) {
  run_with_bias(a, w, bias, y, true, m, n, k, stream);
}

void LtGemm::run_with_bias(const uint16_t* a, const uint16_t* w, const void* bias, void* y, bool y_bf16, int m,
                           int n, int k, cudaStream_t stream) {
  const Plan& p = plan({m, n, k, bias != nullptr, alignment(a), alignment(w), alignment(y),
                        bias ? alignment(bias) : 16, y_bf16});
  if (bias)
    MOXIN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                      &bias, sizeof(bias)));
  matmul(p, a, w, y, stream);
}

bool LtGemm::fp8_scales_in_epilogue(int m, int n, int k, bool out_bf16) {
  const Plan& p = fp8_plan(m, n, k, out_bf16);
  return p.usable && p.outer_vector_scales;
}

bool LtGemm::fp8_usable(int m, int n, int k, bool out_bf16) { return fp8_plan(m, n, k, out_bf16).usable; }

bool LtGemm::offers_bf16_out(int m, int n, int k, const void* w, bool has_bias) {
  return find_plan({m, n, k, has_bias, 16, alignment(w), 16, 16, true}) != nullptr;
}

void LtGemm::matmul(const Plan& p, const void* a, const void* w, void* y, cudaStream_t stream) {
  const float one = 1.0f, zero = 0.0f;
  MOXIN_CUBLAS_CHECK(cublasLtMatmul(handle_, p.desc, &one, w, p.a, a, p.b, &zero, y, p.d, y, p.d,
                                    &p.algo, workspace_, workspace_bytes_, stream));
}

// The same column-major mapping as plan(), with E4M3 A (= w) and B (= a) and f32 or bf16 C = D; with
// outer-vector scaling, A's scale vector has one value per row of op(A) (w's rows, n of them)
// and B's one per column of B (tokens, m of them). nullptr where cuBLASLt offers no algorithm.
std::unique_ptr<LtGemm::Plan> LtGemm::try_fp8_plan(int m, int n, int k, bool outer_vector_scales, bool out_bf16) {
  auto p = std::make_unique<Plan>();
  if (cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS) return nullptr;
  const cublasOperation_t transpose = CUBLAS_OP_T, keep = CUBLAS_OP_N;
  MOXIN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof(transpose)));
  MOXIN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &keep, sizeof(keep)));
  if (outer_vector_scales) {
    const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    if (cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof(mode)) !=
            CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof(mode)) !=
            CUBLAS_STATUS_SUCCESS)
      return nullptr;
  }
  MOXIN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_8F_E4M3, k, n, k));
  MOXIN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_8F_E4M3, k, m, k));
  MOXIN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->d, out_bf16 ? CUDA_R_16BF : CUDA_R_32F, n, m, n));
  cublasLtMatmulPreference_t pref = nullptr;
  MOXIN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = workspace_bytes_;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulHeuristicResult_t result{};
  int found_count = 0;
  const cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(handle_, p->desc, p->a, p->b, p->d, p->d, pref, 1, &result, &found_count);
  cublasLtMatmulPreferenceDestroy(pref);
  if (status != CUBLAS_STATUS_SUCCESS || found_count == 0) return nullptr;
  p->algo = result.algo;
  p->outer_vector_scales = outer_vector_scales;
  return p;
}

const LtGemm::Plan& LtGemm::fp8_plan(int m, int n, int k, bool out_bf16) {
  const auto key = std::make_tuple(m, n, k, out_bf16);
  auto found = fp8_plans_.find(key);
  if (found != fp8_plans_.end()) return *found->second;
  std::unique_ptr<Plan> p = try_fp8_plan(m, n, k, true, out_bf16);
  if (!p) p = try_fp8_plan(m, n, k, false, out_bf16);
  if (!p) {
    p = std::make_unique<Plan>();
    p->usable = false;
  }
  return *fp8_plans_.emplace(key, std::move(p)).first->second;
}

std::optional<bool> LtGemm::run_fp8_unscaled(const uint8_t* a, const float* a_scale, const uint8_t* w,
                                             const float* w_scale, void* y, bool y_bf16, int m, int n, int k,
                                             cudaStream_t stream) {
  // FP8 GEMMs need 16-byte aligned matrices and leading dimensions (k codes, n outputs).
  const int outputs_per_16_bytes = y_bf16 ? 8 : 4;
  if (alignment(a) < 16 || alignment(w) < 16 || alignment(y) < 16 || k % 16 != 0 || n % outputs_per_16_bytes != 0)
    return std::nullopt;
  const Plan& p = fp8_plan(m, n, k, y_bf16);
  if (!p.usable) return std::nullopt;
  if (p.outer_vector_scales) {
    MOXIN_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale, sizeof(w_scale)));
    MOXIN_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &a_scale, sizeof(a_scale)));
  }
  matmul(p, a, w, y, stream);
  return p.outer_vector_scales;
}

bool LtGemm::run_fp8(const uint8_t* a, const float* a_scale, const uint8_t* w, const float* w_scale, float* y,
                     int m, int n, int k, cudaStream_t stream) {
  const std::optional<bool> scaled = run_fp8_unscaled(a, a_scale, w, w_scale, y, false, m, n, k, stream);
  if (!scaled) return false;
  if (!*scaled) scale_rows_columns(y, a_scale, w_scale, m, n, stream);
  return true;
}

}  // namespace moxin::cuda
