// Writes a safetensors file (used by `moxin preprocess`, `moxin dump`, `moxin quantize`).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.hpp"

namespace moxin {

class SafetensorsWriter {
 public:
  // Copies the bytes; `data` must hold numel(shape) * dtype_size(dtype) bytes.
  void add(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
           const void* data);
  void add_f32(const std::string& name, const std::vector<int64_t>& shape, const float* data) {
    add(name, DType::F32, shape, data);
  }
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  // Writes atomically (temp file + rename); throws moxin::Error on I/O failure.
  void write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace moxin
