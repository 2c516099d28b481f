// MappedFile: a whole regular file mapped read-only (MAP_PRIVATE), unmapped when the last
// reference goes. The file must not be truncated or rewritten in place while mapped (replace it
// by rename, as every writer here does). Thread-safe to read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "xtuner/core/status.h"

namespace xt {

class MappedFile {
 public:
  // Maps `path`. Errors ("<what> '<path>': <reason>"): cannot open (missing: *missing = true when
  // given), not a regular file (a directory says so), cannot map. An empty file maps to size 0.
  static Result<std::shared_ptr<const MappedFile>> Open(const std::string& path,
                                                        const std::string& what,
                                                        bool* missing = nullptr);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  MappedFile(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  const uint8_t* data_;
  size_t size_;
};

}  // namespace xt
