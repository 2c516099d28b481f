// Reading and writing Hugging Face safetensors files and checkpoints.
//
// File format: an 8-byte little-endian u64 N, then N bytes of JSON header
//   {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"<key>": "<string>"}}            (metadata optional)
// then the data buffer; offsets are relative to the start of the buffer (byte 8 + N).
//
// Dtypes: a header may use any safetensors dtype (BOOL, U8, I8, I16, U16, I32, U32, I64, U64,
// F16, BF16, F32, F64, C64, F8_E4M3, F8_E5M2, F8_E8M0). Open() accepts them all and checks their
// sizes; Get() returns a Tensor only for the dtypes xtuner holds (F32, BF16, F16, I32, I64,
// F8_E4M3, U8) and is an error for the others, whose bytes stay reachable through Info(). A dtype
// name outside that list makes Open() fail.
//
// Every error message names the file (and the tensor, where there is one) and what was wrong.
// Nothing here aborts on bad input.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/core/tensor.h"

namespace xt {

// What the header says about one tensor.
struct SafetensorsInfo {
  std::string dtype;  // as the file spells it: "F32", "BF16", "F64", "F8_E4M3", ...
  Shape shape;
  size_t nbytes = 0;
  // The tensor's bytes in the file's buffer, with no alignment guarantee. Valid while the
  // SafetensorsFile (or SafetensorsCheckpoint) it came from, or a copy of it, is alive.
  const void* data = nullptr;
};

// One safetensors file, memory-mapped read-only (or a caller's buffer, see FromBuffer). The
// whole header is validated on open; tensor data are not read until asked for.
//
// Copies are cheap and share the mapping. Tensors returned by Get() are zero-copy views into the
// mapping and keep it alive on their own: it is unmapped when the last SafetensorsFile copy and
// the last such Tensor are gone. Those views are READ-ONLY: writing through their data() faults
// (SIGSEGV); Clone() them to get writable memory. The file must not be truncated or rewritten
// in place while mapped (WriteSafetensors replaces files by rename, which is safe).
//
// Thread safety: all const methods may be called concurrently.
class SafetensorsFile {
 public:
  // Maps `path` and validates its header: length, JSON syntax, duplicate keys, every entry's
  // dtype, shape and data_offsets (inside the buffer, matching numel * dtype size, not
  // overlapping another tensor), metadata all strings. Gaps between tensors and trailing bytes
  // after the last one are tolerated (the reference reader rejects them; no writer makes them).
  static Result<SafetensorsFile> Open(const std::string& path);

  // Parses an in-memory file image of `size` bytes. `name` is used in error messages and as
  // path(). `keepalive` owns `data` (may be null if the caller keeps the bytes alive longer
  // than every SafetensorsFile copy and Tensor from it). `data` is treated as read-only.
  static Result<SafetensorsFile> FromBuffer(const std::string& name, const void* data, size_t size,
                                            std::shared_ptr<void> keepalive);

  // Tensor names, sorted.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const;
  // Header information and raw bytes of a tensor of any dtype.
  Result<SafetensorsInfo> Info(const std::string& name) const;

  // The tensor in its stored dtype, as a zero-copy read-only view (see the class comment). If
  // the bytes are not aligned to the element size in memory (possible only in files not written
  // by a safetensors writer) an aligned owned copy is returned instead.
  // Errors: no such tensor; dtype that xtuner cannot hold (F64, U8, ...).
  Result<Tensor> Get(const std::string& name) const;

  // The tensor converted to a new, owned, writable fp32 tensor, from F32, BF16, F16 or F64
  // (F64 is rounded). Errors: no such tensor; other dtypes; shape != `expected` (the message
  // names file, tensor, expected and found shape).
  Result<Tensor> GetF32(const std::string& name, const Shape& expected) const;

  // The values as doubles, exactly, from F64, F32, BF16, F16, I32 or I64 (I64 beyond 2^53 is
  // rounded); for comparisons with float64 references. Same errors as GetF32.
  Result<std::vector<double>> GetF64(const std::string& name, const Shape& expected) const;

  // The "__metadata__" map (empty if the header has none).
  const std::map<std::string, std::string>& metadata() const;
  const std::string& path() const;

 private:
  struct State;
  explicit SafetensorsFile(std::shared_ptr<const State> state) : state_(std::move(state)) {}
  std::shared_ptr<const State> state_;
};

// A Hugging Face checkpoint: one or more safetensors files seen as one set of tensors.
// Thread safety and tensor lifetime as for SafetensorsFile.
class SafetensorsCheckpoint {
 public:
  // `path_or_dir` is one of:
  //  - a directory holding model.safetensors.index.json (preferred) or model.safetensors;
  //  - an index file (*.index.json): {"weight_map": {tensor: shard file name relative to the
  //    index's directory}, "metadata": {...}};
  //  - a single .safetensors file.
  // Every shard is opened and validated. Errors: nothing to open; index not JSON or without a
  // "weight_map" object; a shard missing or invalid; a tensor the index maps to a shard that
  // does not hold it; a tensor in a shard that the index does not map to that shard.
  static Result<SafetensorsCheckpoint> Open(const std::string& path_or_dir);
  // The checkpoint of one file already open (e.g. from FromBuffer); path() is the file's.
  static SafetensorsCheckpoint FromFile(SafetensorsFile file);

  // Tensor names over all files, sorted.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const;
  // The file holding `name`, or "" if no file does.
  std::string FileOf(const std::string& name) const;
  // The path given to Open().
  const std::string& path() const { return path_; }

  // As the SafetensorsFile methods of the same name, on the file that holds `name`.
  Result<SafetensorsInfo> Info(const std::string& name) const;
  Result<Tensor> Get(const std::string& name) const;
  Result<Tensor> GetF32(const std::string& name, const Shape& expected) const;
  Result<std::vector<double>> GetF64(const std::string& name, const Shape& expected) const;

 private:
  Result<const SafetensorsFile*> FileFor(const std::string& name) const;

  std::string path_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
};

// Writes `tensors` (any dtype xtuner holds; names unique, valid UTF-8, not "__metadata__") to
// `path` exactly as the reference implementation (safetensors.torch.save_file) would: data
// contiguous, ordered by dtype (I64, F32, I32, BF16, F16) then name, so every tensor is aligned
// to its element size; header "__metadata__" first, then the tensors in data order, padded with
// spaces so the data buffer starts 8-byte aligned. `metadata` goes to "__metadata__", with
// "format": "pt" added unless given (transformers requires it).
//
// Atomic: the bytes go to "<path>.tmp.<pid>", which is fsynced and renamed over `path`, then the
// directory is fsynced. On failure the temporary file is removed and any existing `path` is left
// untouched. Two concurrent writers of one path in one process are not supported.
Status WriteSafetensors(const std::string& path,
                        const std::vector<std::pair<std::string, Tensor>>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

// Writes a checkpoint into `dir` (created if needed) the way transformers' save_pretrained
// does: tensors are taken in the given order and a new shard begins when adding a tensor
// would take the current one past `max_shard_bytes` of tensor data (a tensor larger than that
// gets a shard of its own). One shard: `dir`/model.safetensors. Several:
// model-00001-of-0000N.safetensors ... plus model.safetensors.index.json
// ({"metadata": {"total_size": <tensor bytes>}, "weight_map": {name: file}}), written last.
// Then files of an earlier save that the new one does not use (model.safetensors, the index,
// model-*-of-*.safetensors shards, and model-*.partial.safetensors shards a killed save left)
// are removed, so Open() sees only the new checkpoint.
//
// Each file is written atomically, but the set is not: a crash part-way can leave a mix. For an
// all-or-nothing save, write into a fresh directory and rename it into place.
Status WriteSafetensorsSharded(const std::string& dir,
                               const std::vector<std::pair<std::string, Tensor>>& tensors,
                               size_t max_shard_bytes);

// The same checkpoint, given a tensor at a time: it holds only the shard being filled. Add
// takes the tensors in order; a shard full (the next tensor would take it past max_shard_bytes)
// is written at once, as "model-0000i.partial.safetensors". Finish writes the last shard and, the
// number of shards known, renames them model-0000i-of-0000N.safetensors (or writes
// model.safetensors where there is one), writes the index and removes an earlier save's files as
// WriteSafetensorsSharded does. A writer destroyed before Finish succeeds removes its partial
// shards; the files of an earlier save are touched only by Finish.
class SafetensorsShardWriter {
 public:
  SafetensorsShardWriter(std::string dir, size_t max_shard_bytes);
  ~SafetensorsShardWriter();
  SafetensorsShardWriter(const SafetensorsShardWriter&) = delete;
  SafetensorsShardWriter& operator=(const SafetensorsShardWriter&) = delete;

  // The checks of WriteSafetensorsSharded (names unique over every shard, valid UTF-8, not
  // "__metadata__"; data present), then the tensor joins the current shard.
  Status Add(std::string name, Tensor t);
  Status Finish();

 private:
  Status Flush();    // the current shard, under its partial name
  Status MakeDir();  // dir_, once

  std::string dir_;
  size_t max_shard_bytes_;
  std::vector<std::pair<std::string, Tensor>> shard_;
  size_t shard_bytes_ = 0;
  uint64_t total_bytes_ = 0;
  std::vector<std::string> partial_;             // shards written, in order
  std::vector<std::vector<std::string>> names_;  // their tensors' names
  std::set<std::string> seen_;
  bool created_ = false, finished_ = false;
};

}  // namespace xt
