// The op-case table (tests/common/op_cases.hpp) on the CUDA backend: the cases and f64
// references the CPU kernel tables run in CI (tests/unit/test_op_cases.cpp), here on the GPU.
#include "cuda_test_support.hpp"
#include "op_cases.hpp"

namespace moxin::cuda_test {
namespace {

class CudaOpCases : public CudaOpsTest {};

TEST_F(CudaOpCases, EveryCaseMatchesItsReference) {
  const std::vector<op_cases::OpCase> cases = op_cases::all_cases(static_cast<uint32_t>(seed_));
  ASSERT_GT(cases.size(), 60u);
  for (const op_cases::OpCase& c : cases) expect_close(c.name, c.run(backend()), c.reference, c.tolerance);
}

}  // namespace
}  // namespace moxin::cuda_test
