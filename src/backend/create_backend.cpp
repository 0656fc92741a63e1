#include "backend/backend.hpp"
#include "backend/cpu/cpu_backend.hpp"
#include "core/check.hpp"
#ifdef MOXIN_HAVE_CUDA
#include "backend/cuda/cuda_backend.hpp"
#endif

namespace moxin {

std::unique_ptr<Backend> create_backend(const BackendOptions& options) {
  switch (options.device) {
    case DeviceKind::CPU:
      return create_cpu_backend(options.threads);
    case DeviceKind::CUDA:
#ifdef MOXIN_HAVE_CUDA
      return create_cuda_backend(options.gpu);
#else
      fail("[backend] this build of moxin has no CUDA backend; rebuild with the CUDA toolkit "
           "installed (cmake -DMOXIN_CUDA=ON) or use --device cpu");
#endif
  }
  fail("[backend] unknown device");
}

}  // namespace moxin
