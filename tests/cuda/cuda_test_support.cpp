#include "cuda_test_support.hpp"

#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <utility>

#include "backend/cuda/cuda_backend.hpp"
#include "backend/cuda/cuda_backend_impl.hpp"
#include "backend/cuda/kernels.hpp"
#include "core/bf16.hpp"
#include "core/check.hpp"

namespace moxin::cuda_test {

Backend* shared_backend() {
  static std::unique_ptr<Backend> backend = []() -> std::unique_ptr<Backend> {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) return nullptr;
    return create_cuda_backend(0);
  }();
  return backend.get();
}

uint64_t fresh_seed() {
  if (const char* env = std::getenv("MOXIN_TEST_SEED")) return std::strtoull(env, nullptr, 10);
  std::random_device device;
  return (uint64_t{device()} << 32) ^ device();
}

float round_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

TensorInfo tensor_info(const std::string& name, DType dtype, std::vector<int64_t> shape, const void* data,
                       size_t nbytes) {
  TensorInfo t;
  t.name = name;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.data = static_cast<const uint8_t*>(data);
  t.nbytes = nbytes;
  t.file = "<test>";
  return t;
}

TensorInfo HostTensor::info() const { return tensor_info(name, dtype, shape, bytes.data(), bytes.size()); }

void CudaOpsTest::SetUp() {
  backend_ = shared_backend();
  if (!backend_) GTEST_SKIP() << "no CUDA GPU on this machine";
  seed_ = fresh_seed();
  rng_.seed(seed_);
  std::printf("[seed] %llu (replay with MOXIN_TEST_SEED=%llu)\n",
              static_cast<unsigned long long>(seed_), static_cast<unsigned long long>(seed_));
}

std::vector<float> CudaOpsTest::randn(size_t n, float scale) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng_);
  return v;
}

std::vector<float> CudaOpsTest::uniform(size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng_);
  return v;
}

int CudaOpsTest::randint(int lo, int hi) {
  return std::uniform_int_distribution<int>(lo, hi)(rng_);
}

Linear CudaOpsTest::prepare(const HostTensor& weight, const HostTensor* bias) {
  const TensorInfo wi = weight.info();
  TensorInfo bi;
  LinearWeight lw;
  lw.weight = &wi;
  if (bias) {
    bi = bias->info();
    lw.bias = &bi;
  }
  lw.out_features = weight.shape.front();
  lw.in_features = wi.numel() / lw.out_features;
  return backend().prepare_linear(lw);
}

HostTensor CudaOpsTest::host_tensor(const std::string& name, const std::vector<int64_t>& shape,
                                    DType stored, bool device_bf16, float scale) {
  HostTensor t;
  t.name = name;
  t.dtype = stored;
  t.shape = shape;
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  const std::vector<float> raw = randn(n, scale);
  t.bytes.resize(n * dtype_size(stored));
  t.values.resize(n);
  for (size_t i = 0; i < n; ++i) {
    float stored_value = raw[i];
    if (stored == DType::BF16) {
      const uint16_t h = f32_to_bf16(raw[i]);
      std::memcpy(t.bytes.data() + 2 * i, &h, 2);
      stored_value = bf16_to_f32(h);
    } else if (stored == DType::F16) {
      const uint16_t h = f32_to_f16(raw[i]);
      std::memcpy(t.bytes.data() + 2 * i, &h, 2);
      stored_value = f16_to_f32(h);
    } else {
      std::memcpy(t.bytes.data() + 4 * i, &raw[i], 4);
    }
    t.values[i] = device_bf16 ? round_bf16(stored_value) : stored_value;
  }
  return t;
}

Tensor CudaOpsTest::upload(const std::vector<float>& v, const std::vector<int64_t>& shape) {
  return backend_->from_host_f32(v.data(), shape);
}

Tensor CudaOpsTest::upload_i32(const std::vector<int32_t>& v, const std::vector<int64_t>& shape) {
  return backend_->from_host_i32(v.data(), shape);
}

Tensor CudaOpsTest::upload_bf16(const std::vector<float>& v, const std::vector<int64_t>& shape) {
  Tensor t = backend_->empty(shape, DType::BF16);
  std::vector<uint16_t> bits(v.size());
  for (size_t i = 0; i < v.size(); ++i) bits[i] = f32_to_bf16(v[i]);
  // The backend's stream does not wait for the legacy stream's copy (a pageable cudaMemcpy may
  // return before its DMA lands), nor the copy for the stream's pending work on reused memory:
  // both sides are drained. (A kernel that read the tensor at once saw the tail unwritten.)
  backend_->synchronize();
  EXPECT_EQ(cudaMemcpy(t.data, bits.data(), bits.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return t;
}

std::vector<float> CudaOpsTest::linear_both_ways(const std::vector<float>& x, int64_t m, int64_t k,
                                                 const Linear& w, const std::string& what) {
  Tensor y = poisoned({m, w.out_features});
  backend_->linear(upload(x, {m, k}), w, y);
  const std::vector<float> from_f32 = download(y);
  const DType wanted = backend_->linear_input_dtype(w, m);
  if (wanted == DType::BF16 || wanted == DType::F8_E4M3) {
    const Tensor x_bf16 = upload_bf16(x, {m, k});
    std::vector<std::pair<Tensor, const char*>> inputs = {{x_bf16, "bf16"}};
    if (wanted == DType::F8_E4M3) inputs.emplace_back(quantize_e4m3(x_bf16), "per-token E4M3");
    for (const auto& [input, kind] : inputs) {
      Tensor y_other = poisoned({m, w.out_features});
      backend_->linear(input, w, y_other);
      const std::vector<float> from_other = download(y_other);
      for (size_t i = 0; i < from_f32.size(); ++i)
        if (std::memcmp(&from_f32[i], &from_other[i], sizeof(float)) != 0) {
          ADD_FAILURE() << what << ": " << kind << " x gives " << from_other[i] << " at " << i << ", f32 x "
                        << from_f32[i];
          break;
        }
    }
  } else {
    Tensor y_bf16 = poisoned({m, w.out_features});
    EXPECT_THROW(backend_->linear(upload_bf16(x, {m, k}), w, y_bf16), Error)
        << what << ": takes f32 activations, yet accepted bf16 ones";
  }
  return from_f32;
}

Tensor CudaOpsTest::poisoned(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return upload(std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()), shape);
}

std::vector<float> CudaOpsTest::download(const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  backend_->to_host_f32(t, out.data());
  return out;
}

Tensor CudaOpsTest::quantize_e4m3(const Tensor& x) {
  auto& cuda_backend = dynamic_cast<cuda::CudaBackend&>(*backend_);
  Tensor codes = backend_->empty(x.shape, DType::F8_E4M3);
  const cuda::InputActivations in{x.dtype == DType::F32 ? static_cast<const float*>(x.data) : nullptr,
                                  x.dtype == DType::BF16 ? static_cast<const cuda::bf16_bits*>(x.data) : nullptr};
  cuda::quantize_rows_e4m3(in, x.rows(), static_cast<int>(x.cols()), static_cast<uint8_t*>(codes.data),
                           codes.row_scales, cuda_backend.stream());
  return codes;
}

std::vector<uint8_t> CudaOpsTest::download_e4m3(const Tensor& t) {
  EXPECT_EQ(t.dtype, DType::F8_E4M3);
  EXPECT_NE(t.row_scales, nullptr);
  std::vector<uint8_t> bytes(static_cast<size_t>(t.numel()) + static_cast<size_t>(t.rows()) * sizeof(float));
  backend_->synchronize();
  EXPECT_EQ(cudaMemcpy(bytes.data(), t.data, static_cast<size_t>(t.numel()), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(bytes.data() + t.numel(), t.row_scales, static_cast<size_t>(t.rows()) * sizeof(float),
                       cudaMemcpyDeviceToHost),
            cudaSuccess);
  return bytes;
}

void expect_close(const std::string& what, const std::vector<float>& got,
                  const std::vector<double>& ref, double tol) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  size_t bad = 0, first_bad = 0;
  double diff2 = 0.0, ref2 = 0.0, max_abs = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) {
      if (bad++ == 0) first_bad = i;
      continue;
    }
    const double d = got[i] - ref[i];
    diff2 += d * d;
    ref2 += ref[i] * ref[i];
    max_abs = std::max(max_abs, std::abs(d));
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size()
                     << " outputs not written or not finite (first at " << first_bad << ")";
  const double err = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  std::printf("RESULT %-58s n=%-9zu rel_err=%.3e max_abs=%.3e tol=%.1e\n", what.c_str(), got.size(),
              err, max_abs, tol);
  EXPECT_LE(err, tol) << what;
}

std::vector<double> rms_norm_ref(const std::vector<float>& x, const std::vector<float>& weight, int64_t rows,
                                 int64_t cols, float eps) {
  std::vector<double> out(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double sq = 0.0;
    for (int64_t i = 0; i < cols; ++i) sq += double(x[r * cols + i]) * x[r * cols + i];
    const double inv = 1.0 / std::sqrt(sq / double(cols) + eps);
    for (int64_t i = 0; i < cols; ++i) out[r * cols + i] = weight[i] * (x[r * cols + i] * inv);
  }
  return out;
}

std::vector<double> swiglu_ref(const std::vector<double>& gate_up, int64_t rows, int64_t half) {
  std::vector<double> out(static_cast<size_t>(rows * half));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < half; ++j) {
      const double g = gate_up[r * 2 * half + j], u = gate_up[r * 2 * half + half + j];
      out[r * half + j] = g / (1.0 + std::exp(-g)) * u;
    }
  return out;
}

std::vector<float> CudaOpsTest::residual_rows(size_t n) {
  std::vector<float> x = randn(n, 4.0f);
  for (float& v : x) v += 0.5f;
  return x;
}

}  // namespace moxin::cuda_test
