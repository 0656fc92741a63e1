// Shared pieces of the CUDA backend tests: the backend under test (one per process), seeded
// random inputs, host-side weights in checkpoint form, NaN-poisoned outputs and the error
// check against f64 references.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.hpp"
#include "io/checkpoint.hpp"

namespace moxin::cuda_test {

// The CUDA backend on GPU 0, or nullptr when this machine has no GPU (tests then skip).
Backend* shared_backend();

// MOXIN_TEST_SEED if set, else a fresh random seed.
uint64_t fresh_seed();

// A TensorInfo over host bytes, as a checkpoint's mapping would describe them (file "<test>").
TensorInfo tensor_info(const std::string& name, DType dtype, std::vector<int64_t> shape, const void* data,
                       size_t nbytes);

// A weight or parameter as a checkpoint holds it (bf16, f16 or f32 bytes) plus the values the
// GPU computes with (bf16-rounded for linear weights, exact for f32 params).
struct HostTensor {
  std::string name;
  DType dtype = DType::BF16;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  std::vector<float> values;
  TensorInfo info() const;
};

class CudaOpsTest : public ::testing::Test {
 protected:
  void SetUp() override;

  std::vector<float> randn(size_t n, float scale = 1.0f);
  std::vector<float> uniform(size_t n, float lo, float hi);
  int randint(int lo, int hi);  // inclusive
  // `stored` is how the checkpoint holds it; `device_bf16` whether the GPU keeps bf16 (weights)
  // or f32 (params): `values` are rounded accordingly.
  HostTensor host_tensor(const std::string& name, const std::vector<int64_t>& shape, DType stored,
                         bool device_bf16, float scale = 1.0f);
  // prepare_linear of a float weight [out, in] (and a bias [out] where given).
  Linear prepare(const HostTensor& weight, const HostTensor* bias = nullptr);

  Tensor upload(const std::vector<float>& v, const std::vector<int64_t>& shape);
  Tensor upload_i32(const std::vector<int32_t>& v, const std::vector<int64_t>& shape);
  Tensor upload_bf16(const std::vector<float>& v, const std::vector<int64_t>& shape);  // rounded
  // linear(x, w) once with f32 x and, where the backend takes bf16 activations at these rows
  // (linear_input_dtype BF16, or F8_E4M3: the FP8 tensor cores quantize bf16), again with x
  // rounded to bf16 as an op feeding it would write it, and for F8_E4M3 once more with those
  // values quantized per token (quantize_e4m3): the results must be the same bits. Returns the
  // f32-x result.
  std::vector<float> linear_both_ways(const std::vector<float>& x, int64_t m, int64_t k, const Linear& w,
                                      const std::string& what);
  Tensor poisoned(const std::vector<int64_t>& shape);  // every element NaN
  // Residual-stream rows as a decoder carries them: a spread of magnitudes, off zero mean.
  std::vector<float> residual_rows(size_t n);
  std::vector<float> download(const Tensor& t);
  // x [m, k] (f32 or bf16) as per-token E4M3 activations, by the kernel the FP8 linears quantize
  // their input with (quantize_rows_e4m3).
  Tensor quantize_e4m3(const Tensor& x);
  // An F8_E4M3 activation tensor's bytes: its codes, then its row scales' bytes.
  std::vector<uint8_t> download_e4m3(const Tensor& t);

  Backend& backend() { return *backend_; }
  Backend* backend_ = nullptr;
  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
};

// Checks that every element was written (finite) and that ||got - ref|| / ||ref|| <= tol;
// prints one line "RESULT <what> rel_err=... max_abs=... tol=..." for the report.
void expect_close(const std::string& what, const std::vector<float>& got,
                  const std::vector<double>& ref, double tol);

float round_bf16(float x);

// RMSNorm of f32 rows [rows, cols] in f64: weight * (x / sqrt(mean(x^2) + eps)).
std::vector<double> rms_norm_ref(const std::vector<float>& x, const std::vector<float>& weight, int64_t rows,
                                 int64_t cols, float eps);
// silu(gate) * up of gate | up rows [rows, 2 half] in f64.
std::vector<double> swiglu_ref(const std::vector<double>& gate_up, int64_t rows, int64_t half);

}  // namespace moxin::cuda_test
