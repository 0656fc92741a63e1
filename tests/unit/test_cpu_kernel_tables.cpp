// The kernel tables the CPU backend can run: each ISA's table is listed exactly when this CPU
// has the ISA (so every op test, which loops over supported_kernels(), runs every path the
// machine can), and the fastest is the default.
#include "test_cpu_common.hpp"
#include "backend/cpu/cpu_features.hpp"
#include "backend/cpu/cpu_matmul_amx.hpp"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

namespace moxin::cpu_test {
namespace {

bool listed(const char* name) {
  for (const cpu::Kernels* k : cpu::supported_kernels())
    if (std::string(k->name) == name) return true;
  return false;
}

TEST(CpuKernelTables, ListsEveryTableThisCpuRuns) {
  EXPECT_TRUE(listed("generic"));
#if defined(__x86_64__)
  EXPECT_EQ(listed("avx2"),
            __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu::cpu_has_f16c());
  EXPECT_EQ(listed("avx512"), __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                  __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma"));
  EXPECT_EQ(listed("amx"), listed("avx512") && cpu::amx_bf16_supported());
  EXPECT_EQ(listed("avx512bf16"), listed("avx512") && __builtin_cpu_supports("avx512bf16"));
#else
  EXPECT_FALSE(listed("amx"));
  EXPECT_FALSE(listed("avx512bf16"));
#endif
#if defined(__aarch64__) && defined(__linux__)
  EXPECT_EQ(listed("neon"), (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0);
#else
  EXPECT_FALSE(listed("neon"));
#endif
  std::string names;
  for (const cpu::Kernels* k : cpu::supported_kernels()) names += cat(k->name, " (tile ", k->gemm_mr, "x", k->gemm_nr, ") ");
  std::cout << "kernel tables on this CPU: " << names << std::endl;
}

TEST(CpuKernelTables, TilesFitTheGemmBlocking) {
  for (const cpu::Kernels* k : cpu::supported_kernels()) {
    EXPECT_GE(k->gemm_mr, 1) << k->name;
    // The GEMM's column blocks (256) hold whole panels of every table.
    EXPECT_TRUE(k->gemm_nr >= 1 && k->gemm_nr <= 32 && 256 % k->gemm_nr == 0) << k->name << " " << k->gemm_nr;
  }
}

TEST(CpuKernelTables, DefaultIsTheFastest) {
  if (std::getenv("MOXIN_CPU_KERNELS")) GTEST_SKIP() << "MOXIN_CPU_KERNELS picks the table";
  EXPECT_STREQ(cpu::best_kernels().name, cpu::supported_kernels().back()->name);
  EXPECT_NE(create_cpu_backend(1)->name().find(cpu::best_kernels().name), std::string::npos);
}

}  // namespace
}  // namespace moxin::cpu_test
