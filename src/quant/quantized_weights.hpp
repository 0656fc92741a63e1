// Load-time quantization of a checkpoint's decoder (`--quantize`): the store owns the packed
// codes, scales and biases, and hands out DecoderWeights whose q/k/v/o/gate/up/down and
// lm_head point at them; embeddings and norms keep pointing into the mapped checkpoint.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "io/checkpoint.hpp"
#include "quant/affine_quant.hpp"
#include "quant/fp8_quant.hpp"

namespace moxin {

// The decoder linears docs/model.md section 5 quantizes, in load order (layer by layer, lm_head last).
std::vector<const LinearWeight*> quantizable_linears(const DecoderWeights& decoder);

class QuantizedWeights {
 public:
  // Called after each matrix with (done, total) and the dense tensor it was made from (not
  // read again: its pages can go).
  using Progress = std::function<void(int done, int total, const TensorInfo& dense)>;

  // Returns a copy of `decoder` with every quantizable linear replaced by its quantized form
  // held in this store (which must outlive the result). Throws moxin::Error if the decoder is
  // already quantized or a shape does not divide into groups.
  DecoderWeights quantize(const DecoderWeights& decoder, int bits, int group_size, ThreadPool* pool,
                          const Progress& progress = {});
  // Same, to FP8 E4M3 with per-output-channel scales (quant/fp8_quant.hpp).
  DecoderWeights quantize_fp8(const DecoderWeights& decoder, ThreadPool* pool, const Progress& progress = {});

  size_t bytes() const;  // codes + scales (+ biases) held

 private:
  struct Entry {
    QuantizedMatrix matrix;  // affine
    Fp8Matrix fp8;           // or fp8
    TensorInfo codes, scales, biases;
  };
  using Replace = std::function<LinearWeight(const LinearWeight& dense)>;
  DecoderWeights replace_linears(const DecoderWeights& decoder, const Replace& replace, const Progress& progress);
  LinearWeight add(const LinearWeight& dense, int bits, int group_size, ThreadPool* pool);
  LinearWeight add_fp8(const LinearWeight& dense, ThreadPool* pool);

  std::vector<std::unique_ptr<Entry>> entries_;  // stable addresses for the TensorInfo pointers
};

}  // namespace moxin
