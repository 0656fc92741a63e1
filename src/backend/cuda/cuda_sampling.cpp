// Backend::sample_tokens on the GPU: the rows' parameters and penalized ids go up in one copy,
// one kernel draws every row (sampling.cu) into a device tensor, which the next step reads
// and only whose ids come back to the host.
#include <cstring>
#include <vector>

#include "backend/cuda/cuda_backend_impl.hpp"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/tensor_checks.hpp"

namespace moxin::cuda {

bool CudaBackend::sample_tokens(const Tensor& logits, std::span<const TokenDraw> rows, Tensor& drawn) {
  require(logits, DType::F32, "sample_tokens", "logits");
  require(drawn, DType::I32, "sample_tokens", "drawn");
  const int64_t vocab = logits.cols();
  MOXIN_CHECK(logits.shape.size() == 2 && logits.rows() == static_cast<int64_t>(rows.size()) &&
                  drawn.numel() >= logits.rows(),
              "[cuda] sample_tokens: logits ", logits.shape_str(), " for ", rows.size(), " draws into ",
              drawn.shape_str(), " ids");
  if (rows.empty()) return true;
  if (!sample_rows_supported(static_cast<int>(vocab))) return false;

  std::vector<TokenDrawParams> params(rows.size());
  std::vector<int32_t> penalized;
  for (size_t r = 0; r < rows.size(); ++r) {
    const TokenDraw& d = rows[r];
    TokenDrawParams& p = params[r];
    p = TokenDrawParams{d.temperature, d.top_p, d.min_p, d.repetition_penalty, d.top_k,
                        static_cast<int>(penalized.size()), 0, 0, d.uniform};
    if (d.repetition_penalty == 1.0f) continue;
    for (const int32_t id : d.penalized)
      MOXIN_CHECK(id >= 0 && id < vocab, "[sampler] context token id ", id, " is outside the vocabulary [0, ",
                  vocab, ")");
    penalized.insert(penalized.end(), d.penalized.begin(), d.penalized.end());
    p.penalized_count = static_cast<int>(d.penalized.size());
  }

  // One staging copy: [params | penalized ids]. Stream-ordered: the pageable source is staged
  // before the copy returns, and the device buffer is freed after the kernel on the stream.
  const size_t params_bytes = params.size() * sizeof(TokenDrawParams);
  const size_t penalized_bytes = penalized.size() * sizeof(int32_t);
  std::vector<unsigned char> staging(params_bytes + penalized_bytes);
  std::memcpy(staging.data(), params.data(), params_bytes);
  if (penalized_bytes) std::memcpy(staging.data() + params_bytes, penalized.data(), penalized_bytes);
  const auto device = device_alloc(context_, staging.size());
  auto* base = static_cast<unsigned char*>(device.get());
  MOXIN_CUDA_CHECK(cudaMemcpyAsync(base, staging.data(), staging.size(), cudaMemcpyHostToDevice, stream()));
  sample_rows(data_of<const float>(logits), static_cast<int>(rows.size()), static_cast<int>(vocab),
              reinterpret_cast<const TokenDrawParams*>(base), reinterpret_cast<const int32_t*>(base + params_bytes),
              data_of<int32_t>(drawn), stream());
  return true;
}

}  // namespace moxin::cuda
