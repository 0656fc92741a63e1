// CUDA graph capture of a sequence of backend ops (cuda_backend.hpp).
#include "backend/cuda/cuda_backend_impl.hpp"
#include "backend/cuda/cuda_check.hpp"

namespace moxin {
namespace {

class CapturedGraph final : public CudaGraph {
 public:
  CapturedGraph(cudaGraphExec_t exec, cudaStream_t stream) : exec_(exec), stream_(stream) {}
  ~CapturedGraph() override { cudaGraphExecDestroy(exec_); }
  void replay() override { MOXIN_CUDA_CHECK(cudaGraphLaunch(exec_, stream_)); }

 private:
  cudaGraphExec_t exec_;
  cudaStream_t stream_;
};

}  // namespace

std::unique_ptr<CudaGraph> capture_cuda_graph(Backend& backend,
                                              const std::function<void()>& record) {
  const cudaStream_t stream = cuda::cuda_backend_of(backend, "capture_cuda_graph").stream();
  MOXIN_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  cudaGraph_t graph = nullptr;
  try {
    record();
  } catch (...) {
    cudaStreamEndCapture(stream, &graph);  // leave the stream usable
    if (graph) cudaGraphDestroy(graph);
    throw;
  }
  MOXIN_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  MOXIN_CUDA_CHECK(status);
  return std::make_unique<CapturedGraph>(exec, stream);
}

}  // namespace moxin
