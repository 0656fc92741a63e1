// Shared by the CPU backend tests: printed random seeds, weights in each dtype, NaN-poisoned
// outputs, the relative error against a double-precision reference, and a loop over every
// kernel table x thread count the backend can run with.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.hpp"
#include "backend/cpu/cpu_backend_impl.hpp"
#include "core/check.hpp"
#include "core/bf16.hpp"
#include "io/safetensors.hpp"
#include "quant/affine_quant.hpp"
#include "random_inputs.hpp"

namespace moxin::cpu_test {

// Fresh per test (or MOXIN_TEST_SEED to replay), printed so a failure can be reproduced.
inline uint32_t test_seed() {
  const char* forced = std::getenv("MOXIN_TEST_SEED");
  const uint32_t seed = forced ? static_cast<uint32_t>(std::strtoul(forced, nullptr, 10)) : std::random_device{}();
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::cout << "[seed] " << (info ? cat(info->test_suite_name(), ".", info->name()) : std::string("?"))
            << ": MOXIN_TEST_SEED=" << seed << std::endl;
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  return seed;
}

using test_common::Random;

// ||ours - ref|| / ||ref|| in double (0 when both are zero).
inline double relative_error(const std::vector<float>& ours, const std::vector<double>& ref) {
  EXPECT_EQ(ours.size(), ref.size());
  double diff = 0, norm = 0;
  for (size_t i = 0; i < ref.size() && i < ours.size(); ++i) {
    diff += (ours[i] - ref[i]) * (ours[i] - ref[i]);
    norm += ref[i] * ref[i];
  }
  if (norm == 0) return std::sqrt(diff);
  return std::sqrt(diff / norm);
}

inline bool all_finite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

// A tensor as the loader would map it: bytes in one of the float dtypes, plus its TensorInfo.
struct OwnedTensor {
  std::vector<uint16_t> halves;
  std::vector<float> floats;
  TensorInfo info;
  std::vector<float> values;  // what the stored numbers are, exactly, for the reference
};

inline std::unique_ptr<OwnedTensor> make_tensor(const std::string& name, DType dtype,
                                                const std::vector<int64_t>& shape,
                                                const std::vector<float>& wanted) {
  auto t = std::make_unique<OwnedTensor>();
  t->info.name = name;
  t->info.dtype = dtype;
  t->info.shape = shape;
  t->values.resize(wanted.size());
  if (dtype == DType::F32) {
    t->floats = wanted;
    t->values = wanted;
    t->info.data = reinterpret_cast<const uint8_t*>(t->floats.data());
    t->info.nbytes = wanted.size() * 4;
  } else {
    t->halves.resize(wanted.size());
    for (size_t i = 0; i < wanted.size(); ++i) {
      t->halves[i] = dtype == DType::BF16 ? f32_to_bf16(wanted[i]) : f32_to_f16(wanted[i]);
      t->values[i] = dtype == DType::BF16 ? bf16_to_f32(t->halves[i]) : f16_to_f32(t->halves[i]);
    }
    t->info.data = reinterpret_cast<const uint8_t*>(t->halves.data());
    t->info.nbytes = wanted.size() * 2;
  }
  return t;
}

inline const std::vector<DType>& weight_dtypes() {
  static const std::vector<DType> dtypes{DType::BF16, DType::F16, DType::F32};
  return dtypes;
}

// A backend with a given kernel table and thread count, named for failure messages.
struct BackendCase {
  std::string label;
  std::unique_ptr<cpu::CpuBackend> backend;
  const cpu::Kernels* kernels;
  int threads;
};

// Every table that computes in f32 (amx's GEMM rounds activations to bf16; its other kernels are
// avx512's: CpuLinear.AmxTableMultipliesBf16RoundedActivationsAtEveryRowCount tests it), at 1 and 2 threads.
inline std::vector<BackendCase> backend_cases() {
  std::vector<BackendCase> cases;
  for (const cpu::Kernels* k : cpu::supported_kernels())
    for (int threads : {1, 2})
      if (k->bf16_tile_matmul == nullptr)
        cases.push_back({cat(k->name, "/", threads, "t"), std::make_unique<cpu::CpuBackend>(threads, *k), k, threads});
  return cases;
}

inline Tensor poisoned(Backend& b, const std::vector<int64_t>& shape) {
  Tensor t = b.empty(shape, DType::F32);
  float* p = t.ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = std::numeric_limits<float>::quiet_NaN();
  return t;
}

inline std::vector<float> host(Backend& b, const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  b.to_host_f32(t, v.data());
  return v;
}

// Runs `op` on every backend case; checks each result against `ref` within `tolerance`, that
// every element was written (outputs start as NaN), and that 1 and 2 threads agree bit for
// bit with the same kernels.
inline void expect_matches(const std::string& what, const std::vector<double>& ref, double tolerance,
                           const std::function<std::vector<float>(Backend&)>& op) {
  std::vector<BackendCase> cases = backend_cases();
  std::vector<std::vector<float>> results;
  for (BackendCase& c : cases) {
    std::vector<float> out = op(*c.backend);
    EXPECT_TRUE(all_finite(out)) << what << " [" << c.label << "]: some output is not finite (unwritten?)";
    const double err = relative_error(out, ref);
    EXPECT_LE(err, tolerance) << what << " [" << c.label << "]: relative error " << err;
    results.push_back(std::move(out));
  }
  for (size_t i = 1; i < cases.size(); ++i) {
    if (cases[i].kernels != cases[i - 1].kernels) continue;
    EXPECT_TRUE(results[i] == results[i - 1])
        << what << ": " << cases[i].label << " differs from " << cases[i - 1].label;
  }
}

// Runs `op` expecting a moxin::Error whose message contains `needle`.
inline void expect_error(const std::function<void()>& op, const std::string& needle) {
  try {
    op();
    ADD_FAILURE() << "expected a moxin::Error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what();
  }
}

// A matrix quantized by quantize_matrix (MLX affine), with the tensors a quantized LinearWeight
// points at (codes `name`, `name.scales`, `name.biases`) and the weights they stand for.
struct QuantizedTestMatrix {
  QuantizedMatrix matrix;
  TensorInfo codes, scales, biases;
  std::vector<float> dequantized;  // [rows, cols]

  LinearWeight linear() const {
    LinearWeight w;
    w.weight = &codes;
    w.scales = &scales;
    w.qbiases = &biases;
    w.bits = matrix.bits;
    w.group_size = matrix.group_size;
    w.out_features = matrix.rows;
    w.in_features = matrix.cols;
    return w;
  }
};

inline std::unique_ptr<QuantizedTestMatrix> quantize_for_test(const std::string& name, const void* data, DType dtype,
                                                              int64_t rows, int64_t cols, int bits, int group) {
  auto q = std::make_unique<QuantizedTestMatrix>();
  q->matrix = quantize_matrix(data, dtype, rows, cols, bits, group, nullptr, name);
  const QuantizedMatrix& m = q->matrix;
  const std::vector<int64_t> groups{rows, cols / group};
  q->codes = TensorInfo{name, DType::U32, {rows, cols * bits / 32}, reinterpret_cast<const uint8_t*>(m.codes.data()),
                        m.codes.size() * 4, "test"};
  q->scales = TensorInfo{name + ".scales", m.scale_dtype, groups, m.scales.data(), m.scales.size(), "test"};
  q->biases = TensorInfo{name + ".biases", m.scale_dtype, groups, m.biases.data(), m.biases.size(), "test"};
  q->dequantized.resize(static_cast<size_t>(rows * cols));
  dequantize_rows(m.view(), 0, rows, q->dequantized.data());
  return q;
}

}  // namespace moxin::cpu_test
