#include "io/mapped_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/check.hpp"

namespace moxin {
namespace {

// Closes the descriptor on every path: the mapping keeps the file alive on its own.
struct FdCloser {
  int fd;
  ~FdCloser() { ::close(fd); }
};

}  // namespace

MappedFile::MappedFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("[io] cannot open '", path, "': ", std::strerror(errno));
  FdCloser closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail("[io] cannot stat '", path, "': ", std::strerror(errno));
  MOXIN_CHECK(S_ISREG(st.st_mode), "[io] '", path, "' is not a regular file");
  size_ = static_cast<size_t>(st.st_size);
  if (size_ == 0) return;  // mmap refuses length 0; callers see an empty file
  // MAP_PRIVATE + PROT_READ: nobody can write through it, and no madvise: the default
  // readahead suits both the CPU backend (reads every weight on each token) and the CUDA
  // upload (reads each weight once, in file order).
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED)
    fail("[io] cannot mmap '", path, "' (", size_, " bytes): ", std::strerror(errno));
  data_ = static_cast<const uint8_t*>(p);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

void MappedFile::release_resident_pages() const {
  if (size_ == 0) return;
  // MADV_DONTNEED on a read-only file mapping only unmaps the pages: no data is lost.
  madvise(const_cast<uint8_t*>(data_), size_, MADV_DONTNEED);
}

bool MappedFile::release_resident_pages(const void* begin, size_t bytes) const {
  const auto* first = static_cast<const uint8_t*>(begin);
  if (size_ == 0 || first < data_ || first + bytes > data_ + size_) return false;
  // Whole pages only, rounded inwards: the neighbours' partial pages stay (harmless either way
  // on a read-only file mapping, but there is no reason to drop them).
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(first) + page - 1) / page * page;
  const uintptr_t hi = reinterpret_cast<uintptr_t>(first + bytes) / page * page;
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
  return true;
}

}  // namespace moxin
