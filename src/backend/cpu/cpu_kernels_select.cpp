// Which kernel table runs: the fastest this CPU supports, unless MOXIN_CPU_KERNELS names one
// (to compare paths on one machine, or to rule a SIMD path out when chasing a problem).
#include <cstdlib>
#include <string>
#include <string_view>

#include "backend/cpu/cpu_kernels.hpp"
#include "backend/cpu/cpu_matmul_amx.hpp"
#include "backend/cpu/cpu_matmul_avx512bf16.hpp"
#include "core/check.hpp"

namespace moxin::cpu {

const Kernels* amx_kernels() {
  static const Kernels* const table = []() -> const Kernels* {
    const Kernels* avx512 = avx512_kernels();
    if (avx512 == nullptr || !amx_bf16_supported()) return nullptr;
    static Kernels amx = *avx512;
    amx.name = "amx";
    amx.bf16_tile_matmul = matmul_amx_bf16;
    return &amx;
  }();
  return table;
}

const Kernels* avx512bf16_kernels() {
  static const Kernels* const table = []() -> const Kernels* {
    const Kernels* avx512 = avx512_kernels();
    if (avx512 == nullptr || !avx512_bf16_supported()) return nullptr;
    static Kernels bf16 = *avx512;
    bf16.name = "avx512bf16";
    bf16.bf16_tile_matmul = matmul_avx512_bf16;
    return &bf16;
  }();
  return table;
}

std::vector<const Kernels*> supported_kernels() {
  std::vector<const Kernels*> tables{&generic_kernels()};
  if (const Kernels* avx2 = avx2_kernels()) tables.push_back(avx2);
  // avx512bf16 before avx512: not the default anywhere yet. On an Intel Emerald Rapids core
  // VDPBF16PS issues at a sixth of the FMAs' rate (0.9 against 5.4 G a second: a third of their
  // products), so its GEMMs run at half of avx512's (docs/cpu-notes.md, session 30); AMD's Zen 4
  // and 5, where it should double the f32 rate, are where to measure it before it leads.
  if (const Kernels* bf16 = avx512bf16_kernels()) tables.push_back(bf16);
  if (const Kernels* avx512 = avx512_kernels()) tables.push_back(avx512);
  if (const Kernels* amx = amx_kernels()) tables.push_back(amx);
  if (const Kernels* neon = neon_kernels()) tables.push_back(neon);
  return tables;
}

const Kernels& best_kernels() {
  static const Kernels& chosen = []() -> const Kernels& {
    const std::vector<const Kernels*> tables = supported_kernels();
    const char* forced = std::getenv("MOXIN_CPU_KERNELS");
    if (!forced || !*forced) return *tables.back();
    std::string names;
    for (const Kernels* k : tables) {
      if (std::string_view(forced) == k->name) return *k;
      names += names.empty() ? k->name : std::string(", ") + k->name;
    }
    fail("[cpu] MOXIN_CPU_KERNELS=", forced, " is not a kernel table this build and CPU can run (", names,
         "); unset it to run the fastest");
  }();
  return chosen;
}

}  // namespace moxin::cpu
