// Whole-file reads that report every failure, and durable file writes: a crash or a full disk
// at any moment leaves either the old file or the new one, never a torn one.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "xtuner/core/status.h"

namespace xt {

struct Chunk {
  const void* data;
  size_t size;
};

// Writes `chunks` to `path` via "<path>.tmp.<pid>": write, fsync, rename, then fsync the
// directory (best effort: some file systems refuse). On failure the temporary file is removed
// and `path` is untouched; the error names both files.
Status WriteFileAtomically(const std::string& path, const std::vector<Chunk>& chunks);
Status WriteFileAtomically(const std::string& path, std::string_view bytes);

// The bytes of the file at `path`. Errors name the path and the system's reason: "<path>: cannot
// open: No such file or directory", "<path>: is a directory", "<path>: read error: ...". (A
// stream's `in >> rdbuf` would read a directory or a failed read as empty or truncated text.)
Result<std::string> ReadFileToString(const std::string& path);

// The system's message for errno as it is now (strerror): call it before anything that may
// change errno.
std::string ErrnoText();

// fsync of a directory, so a rename inside it survives a power cut (best effort).
void SyncDirectory(const std::string& dir);

// Puts the directory `from` (a directory itself, not a symlink) at `to` (absent, or a directory
// it replaces; a file or a symlink there is replaced itself, not what it points to). Where `to`
// exists the two are exchanged in one step (renameat2's RENAME_EXCHANGE), so that a crash at any
// moment leaves at `to` the old one or the new one, and the old one, then at `from`, is removed
// (best effort: one left there is the caller's to clear). A file system that cannot exchange has
// the old one removed first: for a moment `to` is absent, the new one still at `from`. Syncing the
// files inside `from` is the caller's part. Errors name both paths and leave the new one at
// `from`; `from` and `to` the same directory, or one inside the other, or `from` not a directory,
// is an error that touches neither.
Status SwapInDirectory(const std::string& from, const std::string& to);

}  // namespace xt
