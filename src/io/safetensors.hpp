// Read-only access to safetensors files through mmap: one file, or the shards a
// `model.safetensors.index.json` lists. Headers are validated before any tensor is exposed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.hpp"

namespace moxin {

class MappedFile;

// One tensor inside a mapped file. `data` stays valid while the owning file/store lives.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  std::string file;  // path of the file holding it, for error messages

  int64_t numel() const;
  std::string shape_str() const;  // "[1024, 3, 14, 14]"
};

std::string shape_str(const std::vector<int64_t>& shape);  // "[1024, 3, 14, 14]"

struct SafetensorsLimits {
  size_t max_header_bytes = 100u << 20;  // 100 MB, as the reference reader allows
};

class SafetensorsFile {
 public:
  // Throws moxin::Error naming the file and the problem (missing, truncated, bad header,
  // overlapping or out-of-range offsets, byte count not matching dtype x shape, ...).
  static std::shared_ptr<SafetensorsFile> open(const std::string& path,
                                               const SafetensorsLimits& limits = {});
  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;  // nullptr if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const MappedFile& mapping() const { return *map_; }

 private:
  // A 64-byte-aligned copy of a tensor whose bytes in the mapping are misaligned; owned here.
  const uint8_t* aligned_copy(const uint8_t* data, size_t nbytes);
  struct FreeDeleter {
    void operator()(uint8_t* p) const { std::free(p); }
  };

  std::string path_;
  std::shared_ptr<MappedFile> map_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::unique_ptr<uint8_t, FreeDeleter>> aligned_copies_;
};

// All tensors of a checkpoint directory: `model.safetensors`, or the shards named by
// `model.safetensors.index.json` (each tensor must be in the shard the index names).
class TensorStore {
 public:
  static TensorStore open_dir(const std::string& dir, const SafetensorsLimits& limits = {});
  const TensorInfo* find(const std::string& name) const;  // nullptr if absent
  std::vector<std::string> names() const;                // sorted
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }
  // See MappedFile::release_resident_pages: all pages, or those of one tensor of this store
  // (any other TensorInfo, e.g. one in ordinary memory, is left alone).
  void release_resident_pages() const;
  void release_resident_pages(const TensorInfo& t) const;
  size_t total_bytes() const;  // sum of tensor payloads
  size_t size() const { return by_name_.size(); }

  // Another view of `t`'s bytes with a shape of the same element count (e.g. a conv weight
  // as a matrix). The store owns it, so the pointer lives as long as the store (or a copy).
  const TensorInfo* reshaped(const TensorInfo& t, std::vector<int64_t> shape);
  // A new tensor `name` in ordinary memory: `parts` stacked along the first dimension (same
  // dtype and trailing dimensions), e.g. split q/k/v projections as one fused qkv. The store
  // owns it, as with reshaped().
  const TensorInfo* concatenated(const std::vector<const TensorInfo*>& parts, const std::string& name);

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*> by_name_;
  std::vector<std::shared_ptr<const TensorInfo>> views_;
  std::vector<std::shared_ptr<const std::vector<uint8_t>>> owned_bytes_;  // of concatenated()
};

}  // namespace moxin
