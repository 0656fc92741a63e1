// A whole file mapped read-only into memory. Tensors point straight into the mapping, so
// weights are never copied and pages are loaded on first touch by the kernel.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace moxin {

class MappedFile {
 public:
  // Throws moxin::Error naming the file if it cannot be opened, is not a regular file, or
  // cannot be mapped. An empty file maps to size() == 0 and data() == nullptr.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  // Drops the pages read so far from this process's resident set (they stay in the page cache
  // and fault back in if touched): for backends that copied the weights to a device.
  void release_resident_pages() const;
  // The same for the whole pages inside [begin, begin + bytes) (e.g. one tensor's); a range
  // outside this mapping is ignored. Returns whether the range lay inside it.
  bool release_resident_pages(const void* begin, size_t bytes) const;

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace moxin
