// An exclusive lock on a blob while it downloads, on the same file and with the same flock()
// huggingface_hub takes (<cache>/.locks/models--org--name/<etag>.lock), so two downloaders of
// either tool never append to one .incomplete file at once; the later one waits, then finds
// the blob there.
#pragma once

#include <filesystem>

namespace moxin::hub {

class BlobLock {
 public:
  explicit BlobLock(const std::filesystem::path& lock_file);  // blocks until held
  ~BlobLock();
  BlobLock(const BlobLock&) = delete;
  BlobLock& operator=(const BlobLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace moxin::hub
