// The op-case table (tests/common/op_cases.hpp) on the CPU: every case on every kernel table
// (generic, and AVX-512 where the machine has it) with 1 and 2 threads, against its
// double-precision reference; the same kernels agree bit for bit whatever the thread count.
#include "op_cases.hpp"
#include "test_cpu_common.hpp"

namespace moxin::cpu_test {
namespace {

TEST(OpCases, EveryCaseMatchesItsReferenceOnEveryCpuKernelTable) {
  const std::vector<op_cases::OpCase> cases = op_cases::all_cases(test_seed());
  ASSERT_GT(cases.size(), 60u);
  for (const op_cases::OpCase& c : cases) expect_matches(c.name, c.reference, c.tolerance, c.run);
}

}  // namespace
}  // namespace moxin::cpu_test
