#include "xtuner/core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace xt {

Result<std::shared_ptr<const MappedFile>> MappedFile::Open(const std::string& path,
                                                           const std::string& what, bool* missing) {
  const std::string where = what + " '" + path + "'";
  if (missing) *missing = false;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (missing) *missing = errno == ENOENT;
    return Status::Error("cannot open " + where + ": " + std::strerror(errno));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const std::string err = std::strerror(errno);
    ::close(fd);
    return Status::Error("cannot stat " + where + ": " + err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::Error(where + ": not a regular file" +
                         std::string(S_ISDIR(st.st_mode) ? " (it is a directory)" : ""));
  }
  const size_t size = size_t(st.st_size);
  if (size == 0) {
    ::close(fd);
    return std::shared_ptr<const MappedFile>(new MappedFile(nullptr, 0));
  }
  void* addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const std::string err = std::strerror(errno);
  ::close(fd);
  if (addr == MAP_FAILED) return Status::Error("cannot mmap " + where + ": " + err);
  return std::shared_ptr<const MappedFile>(new MappedFile(static_cast<const uint8_t*>(addr), size));
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

}  // namespace xt
