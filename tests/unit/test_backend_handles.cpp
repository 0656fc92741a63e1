// Typed backend handles: a Linear the CPU backend did not prepare (another backend's, or none)
// and a tensor in another device's memory are refused with a message naming the op, never read
// as if they were the CPU's.
#include "test_cpu_common.hpp"

namespace moxin::cpu_test {
namespace {

struct ForeignLinear final : LinearImpl {
  float not_a_cpu_weight[4] = {1, 2, 3, 4};
};

TEST(BackendHandles, CpuRefusesALinearItDidNotPrepare) {
  auto backend = create_cpu_backend(1);
  Tensor x = backend->empty({1, 4}, DType::F32), y = backend->empty({1, 2}, DType::F32);
  Linear foreign;
  foreign.out_features = 2;
  foreign.in_features = 4;
  foreign.impl = std::make_shared<ForeignLinear>();
  expect_error([&] { backend->linear(x, foreign, y); },
               "[cpu] linear: the weight was not prepared by this CPU backend");
  Linear empty = foreign;
  empty.impl = nullptr;
  expect_error([&] { backend->linear(x, empty, y); },
               "[cpu] linear: the weight was not prepared by this CPU backend");
}

TEST(BackendHandles, CpuRefusesATensorOfAnotherDevice) {
  auto backend = create_cpu_backend(1);
  Tensor x = backend->empty({2, 8}, DType::F32), y = backend->empty({2, 8}, DType::F32);
  Tensor w = backend->empty({8}, DType::F32);
  Tensor on_gpu = x;
  on_gpu.device = DeviceKind::CUDA;
  expect_error([&] { backend->rms_norm(on_gpu, w, 1e-5f, y); },
               "[cpu] rms_norm: x [2, 8] is in device memory (a tensor of another backend)");
}

}  // namespace
}  // namespace moxin::cpu_test
