#include <atomic>
#include <cstdlib>
#include <cstring>

#include "backend/cuda/launch.cuh"

namespace moxin::cuda {
namespace {

// Off unless MOXIN_CUDA_PDL=1: on the H200 a graph-replayed decoder layer ran slower with it
// (batch 1: 146 vs 138 us; batch 32: 224 vs 226 us; docs/cuda-notes.md, session 3).
std::atomic<bool>& pdl_flag() {
  static std::atomic<bool> flag = [] {
    const char* env = std::getenv("MOXIN_CUDA_PDL");
    return env && std::strcmp(env, "1") == 0;
  }();
  return flag;
}

}  // namespace

bool pdl_enabled() { return pdl_flag().load(std::memory_order_relaxed); }
void set_pdl_enabled(bool on) { pdl_flag().store(on, std::memory_order_relaxed); }

}  // namespace moxin::cuda
