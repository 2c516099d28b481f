#include "xtuner/core/file_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace xt {

namespace fs = std::filesystem;

namespace {

// Where `p` names, its directory's symlinks resolved but not its last part's ("out/" is "out").
fs::path Place(const std::string& p, std::error_code* ec) {
  fs::path a = fs::absolute(p, *ec).lexically_normal();
  if (!a.has_filename()) a = a.parent_path();
  return fs::weakly_canonical(a.parent_path(), *ec) / a.filename();
}

}  // namespace

std::string ErrnoText() { return std::strerror(errno); }

Result<std::string> ReadFileToString(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const std::string why = ErrnoText();
    return Status::Error(path + ": cannot open: " + why);
  }
  std::string text;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const std::string why = errno == EISDIR ? "is a directory" : "read error: " + ErrnoText();
      ::close(fd);
      return Status::Error(path + ": " + why);
    }
    if (n == 0) break;
    text.append(buf, size_t(n));
  }
  ::close(fd);
  return text;
}

// Writes `chunks` to `path` via "<path>.tmp.<pid>", fsync and rename; then fsyncs the directory
// (best effort: some file systems refuse). Removes the temporary file on failure.
Status WriteFileAtomically(const std::string& path, const std::vector<Chunk>& chunks) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    const std::string why = ErrnoText();
    return Status::Error("cannot create '" + tmp + "': " + why);
  }
  auto fail = [&](const std::string& what) {
    const std::string why = ErrnoText();  // before anything else can change errno
    std::string msg = what + " '" + tmp + "': " + why;
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    return Status::Error(msg + " (writing '" + path + "')");
  };
  for (const Chunk& c : chunks) {
    const auto* p = static_cast<const char*>(c.data);
    size_t left = c.size;
    while (left > 0) {
      ssize_t n = ::write(fd, p, std::min<size_t>(left, size_t(1) << 30));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        if (n == 0) errno = EIO;
        return fail("cannot write");
      }
      p += n;
      left -= size_t(n);
    }
  }
  if (::fsync(fd) != 0) return fail("cannot fsync");
  int rc = ::close(fd);
  fd = -1;
  if (rc != 0) return fail("cannot close");
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = ErrnoText();
    std::string msg = "cannot rename '" + tmp + "' to '" + path + "': " + why;
    ::unlink(tmp.c_str());
    return Status::Error(msg);
  }
  SyncDirectory(fs::path(path).parent_path().string());
  return Status::OK();
}

Status WriteFileAtomically(const std::string& path, std::string_view bytes) {
  return WriteFileAtomically(path, std::vector<Chunk>{{bytes.data(), bytes.size()}});
}

void SyncDirectory(const std::string& dir) {
  int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

Status SwapInDirectory(const std::string& from, const std::string& to) {
  std::error_code ec, ec_to;
  const fs::path f = Place(from, &ec), t = Place(to, &ec_to);
  if (!ec) ec = ec_to;
  const auto inside = [](const fs::path& a, const fs::path& b) {  // a is b or below it
    return std::mismatch(a.begin(), a.end(), b.begin(), b.end()).second == b.end();
  };
  if (ec || inside(f, t) || inside(t, f))
    return Status::Error("cannot put '" + from + "' at '" + to +
                         "': " + (ec ? ec.message() : "one is the other or inside it"));
  // A directory itself: a symlink moved in would be removed below with what it points to.
  if (fs::symlink_status(from, ec).type() != fs::file_type::directory)
    return Status::Error("cannot put '" + from + "' at '" + to + "': '" + from +
                         "' is not a directory");
  const std::string parent = t.parent_path().string();
  if (fs::symlink_status(to, ec).type() != fs::file_type::not_found) {
    const int rc = ::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_EXCHANGE);
    const int err = errno;
    if (rc == 0) {
      SyncDirectory(parent);
      fs::remove_all(from, ec);
      return Status::OK();
    }
    if (err != EINVAL && err != ENOSYS && err != EOPNOTSUPP)
      return Status::Error("cannot exchange '" + from + "' and '" + to +
                           "': " + std::strerror(err));
    fs::remove_all(to, ec);
    if (ec)
      return Status::Error("cannot remove '" + to + "' to put '" + from +
                           "' there: " + ec.message());
  }
  if (::rename(from.c_str(), to.c_str()) != 0) {
    const int err = errno;
    return Status::Error("cannot rename '" + from + "' to '" + to + "': " + std::strerror(err));
  }
  SyncDirectory(parent);
  return Status::OK();
}

}  // namespace xt
