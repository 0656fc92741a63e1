#include <atomic>
#include <cstdlib>
#include <cstring>

#include "backend/cuda/launch.cuh"

namespace moxin::cuda {
namespace {

std::atomic<bool>& pdl_flag() {
  static std::atomic<bool> flag = [] {
    const char* env = std::getenv("MOXIN_CUDA_PDL");
    return !(env && std::strcmp(env, "0") == 0);
  }();
  return flag;
}

}  // namespace

bool pdl_enabled() { return pdl_flag().load(std::memory_order_relaxed); }
void set_pdl_enabled(bool on) { pdl_flag().store(on, std::memory_order_relaxed); }

}  // namespace moxin::cuda
