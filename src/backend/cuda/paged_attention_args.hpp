// The host side's checked views of a paged attention op's operands: the CUDA cache and layer, and
// the batch's token index as the kernels take it (kernels.hpp's TokenIndex).
#pragma once

#include "backend/cuda/cuda_backend_impl.hpp"
#include "backend/cuda/tensor_checks.hpp"

namespace moxin::cuda {

inline CudaKvCache& cuda_cache(KvCache& cache, int layer, const char* op) {
  auto* c = dynamic_cast<CudaKvCache*>(&cache);
  MOXIN_CHECK(c != nullptr, "[cuda] ", op, ": the KV cache was not created by this CUDA backend");
  MOXIN_CHECK(layer >= 0 && layer < c->config().layers, "[cuda] ", op, ": layer ", layer,
              " outside the cache's 0..", c->config().layers - 1);
  return *c;
}

inline TokenIndex token_index(const AttentionBatch& batch, int64_t tokens, const char* op) {
  require(batch.token_seq, DType::I32, op, "token_seq");
  require(batch.token_pos, DType::I32, op, "token_pos");
  require(batch.block_tables, DType::I32, op, "block_tables");
  MOXIN_CHECK(batch.token_seq.numel() == tokens && batch.token_pos.numel() == tokens, "[cuda] ", op,
              ": ", tokens, " tokens but token_seq ", batch.token_seq.shape_str(),
              " and token_pos ", batch.token_pos.shape_str());
  MOXIN_CHECK(batch.block_tables.numel() > 0 || tokens == 0, "[cuda] ", op, ": empty block_tables");
  TokenIndex index;
  index.token_seq = data_of<const int32_t>(batch.token_seq);
  index.token_pos = data_of<const int32_t>(batch.token_pos);
  index.block_tables = data_of<const int32_t>(batch.block_tables);
  index.tokens = static_cast<int>(tokens);
  index.num_seqs = static_cast<int>(batch.block_tables.rows());
  index.max_blocks = static_cast<int>(batch.block_tables.cols());
  return index;
}

}  // namespace moxin::cuda
