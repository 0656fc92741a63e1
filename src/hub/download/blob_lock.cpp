#include "hub/download/blob_lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/check.hpp"

namespace moxin::hub {

BlobLock::BlobLock(const std::filesystem::path& lock_file) {
  std::filesystem::create_directories(lock_file.parent_path());
  fd_ = ::open(lock_file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0664);
  MOXIN_CHECK(fd_ >= 0, "[hub] cannot create the lock file ", lock_file.string(), ": ", std::strerror(errno));
  int rc;
  while ((rc = ::flock(fd_, LOCK_EX)) != 0 && errno == EINTR) {
  }
  if (rc != 0) {
    const int error = errno;
    ::close(fd_);
    fail("[hub] cannot lock ", lock_file.string(), ": ", std::strerror(error));
  }
}

BlobLock::~BlobLock() {
  ::flock(fd_, LOCK_UN);
  ::close(fd_);
}

}  // namespace moxin::hub
