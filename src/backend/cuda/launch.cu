#include <atomic>
#include <cstdlib>
#include <cstring>

#include "backend/cuda/launch.cuh"

namespace moxin::cuda {
namespace {

// -1: the default policy (prefetching launches only); 2: the default once a quantized decoder is
// loaded (every launch); 0: never; 1: every launch (both forced).
std::atomic<int>& pdl_mode() {
  static std::atomic<int> mode = [] {
    const char* env = std::getenv("MOXIN_CUDA_PDL");
    if (env && std::strcmp(env, "0") == 0) return 0;
    if (env && std::strcmp(env, "1") == 0) return 1;
    return -1;
  }();
  return mode;
}

}  // namespace

bool pdl_for_launch(bool prefetching) {
  const int mode = pdl_mode().load(std::memory_order_relaxed);
  return mode < 0 ? prefetching : mode != 0;
}

void prefer_pdl_everywhere() {
  int expected = -1;
  pdl_mode().compare_exchange_strong(expected, 2, std::memory_order_relaxed);
}

void set_pdl_enabled(bool on) { pdl_mode().store(on ? 1 : 0, std::memory_order_relaxed); }

int multiprocessors() {
  static const int count = [] {
    int device = 0, sms = 0;
    MOXIN_CUDA_CHECK(cudaGetDevice(&device));
    MOXIN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    return sms;
  }();
  return count;
}

}  // namespace moxin::cuda
