// Tokenized cache: a binary, memory-mapped file of tokenized Samples, so that a dataset is
// tokenized once and every later run (and every rank) maps it in milliseconds.
//
// The file is keyed by a 128-bit content key (CacheKey) over everything the tokens depend on:
// the data file's bytes, the tokenizer.json bytes, the chat template, the options. A cache whose
// key, format version, size or checksums do not match is never read: OpenTokenCache refuses it
// and says why (CacheProblem), and LoadOrBuildTokenCache rebuilds it. The byte layout is
// documented in docs/formats.md, section "Tokenized cache".
//
// Writing is atomic: TokenCacheWriter streams to "<path>.tmp.<pid>.<random>", and only Commit()
// renames the finished, fsynced file over `path`. A process killed mid-write leaves at most a
// stray temporary file; `path` keeps its previous content (or stays absent).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/data/sample.h"

namespace xt {

// ------------------------------------------------------------------------------------ CacheKey

// XXH3-128 of the parts a cache was built from. Equal keys mean "same inputs" (up to a 2^-128
// collision).
struct CacheKey {
  uint64_t lo = 0, hi = 0;  // XXH128_hash_t's low64 and high64
  bool operator==(const CacheKey&) const = default;
  // 32 lowercase hex digits, high half first (as XXH128's canonical form); handy in file names.
  std::string Hex() const;
};

// Builds a CacheKey from named parts, in order. Each part is framed (name length, name, content
// length, content), so ("ab", "c") and ("a", "bc") differ, and so do the same bytes under two
// names. The order of Add* calls matters. Not thread-safe; one builder per key.
//
//   CacheKeyBuilder b;
//   XT_RETURN_IF_ERROR(b.AddFile("data", jsonl_path));
//   XT_RETURN_IF_ERROR(b.AddFile("tokenizer", tokenizer_json_path));
//   b.AddBytes("chat_template", "qwen3");
//   b.AddBytes("options", "max_length=4096;...");
//   CacheKey key = b.Finish();
class CacheKeyBuilder {
 public:
  CacheKeyBuilder();
  ~CacheKeyBuilder();
  CacheKeyBuilder(const CacheKeyBuilder&) = delete;
  CacheKeyBuilder& operator=(const CacheKeyBuilder&) = delete;

  CacheKeyBuilder& AddBytes(std::string_view name, std::string_view bytes);
  // Hashes the file's bytes, streamed (any size). Errors name the file: missing, unreadable, or
  // changed size while being read (then the builder must not be used further).
  Status AddFile(std::string_view name, const std::string& path);
  // The key of the parts added so far (the builder may be extended and finished again).
  CacheKey Finish() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// ---------------------------------------------------------------------------------- TokenCache

// Why a cache file cannot be used as it is.
enum class CacheProblem {
  kNone,             // valid: reused
  kMissing,          // no file at the path
  kUnreadable,       // cannot open, stat or map it (permissions, a directory, I/O error)
  kNotACache,        // too short to hold a header, or wrong magic: not written by us
  kVersionMismatch,  // written by another version of the format
  kKeyMismatch,      // built from other inputs (data, tokenizer, template or options changed)
  kTruncated,        // shorter than its header says (an interrupted copy, a full disk)
  kCorrupt,          // a checksum, the trailer or the offsets table is wrong
};
const char* CacheProblemName(CacheProblem p);  // "missing", "key mismatch", ...

// One sample of a cache: zero-copy views into the mapping, valid while the TokenCache (or a
// copy) lives. input_ids and labels have the same, non-zero length.
struct SampleView {
  std::span<const int32_t> input_ids;
  std::span<const int32_t> labels;
  int64_t size() const { return int64_t(input_ids.size()); }
};

// A valid cache file, mapped read-only. Copies are cheap and share the mapping, which is unmapped
// when the last copy goes. All methods are const and thread-safe. The file may be replaced by
// rename (as the writer does) while mapped, never truncated or rewritten in place.
class TokenCache {
 public:
  int64_t num_samples() const;
  int64_t num_tokens() const;         // over all samples
  int64_t num_masked_tokens() const;  // labels equal to -100
  const CacheKey& key() const;
  const std::string& path() const;

  // 0 <= i < num_samples(), else XT_CHECK fails.
  SampleView sample(int64_t i) const;
  int64_t length(int64_t i) const;
  // The length of every sample, in order: what the packer plans with.
  std::vector<int64_t> lengths() const;
  // An owned copy of sample i.
  Sample Copy(int64_t i) const;

  // Made by OpenTokenCache only (State is private to token_cache.cc).
  struct State;
  explicit TokenCache(std::shared_ptr<const State> s) : state_(std::move(s)) {}

 private:
  std::shared_ptr<const State> state_;
};

// Maps and validates the cache at `path`: magic, version, header checksum, key == `expected`,
// file size, trailer, payload checksum (XXH3-64, one pass over the whole file), and the offsets
// table. Any failure is an error naming the file and what is wrong; `problem`, if given, is set
// to its kind (kNone on success).
Result<TokenCache> OpenTokenCache(const std::string& path, const CacheKey& expected,
                                  CacheProblem* problem = nullptr);

// ---------------------------------------------------------------------------- TokenCacheWriter

// Streams samples into a new cache for `path`. Memory: a 1 MiB buffer plus 8 bytes per sample
// (the offsets table, written at the end). Not thread-safe. Destroying a writer that was not
// committed (or whose Commit failed) removes its temporary file and leaves `path` untouched.
class TokenCacheWriter {
 public:
  // Creates the temporary file in the directory of `path` (which must exist).
  static Result<TokenCacheWriter> Create(const std::string& path, const CacheKey& key);

  // Appends one sample. Errors (nothing is written): lengths differ, empty sample, a token id < 0,
  // a label < 0 other than -100; I/O errors (the writer is then unusable). The message counts
  // samples from 0 in the order added.
  Status Add(std::span<const int32_t> input_ids, std::span<const int32_t> labels);
  Status Add(const Sample& s) { return Add(s.input_ids, s.labels); }

  // Finishes the file (offsets, trailer, header), fsyncs it, renames it over `path` and fsyncs
  // the directory. After Commit, successful or not, the writer accepts nothing more.
  Status Commit();

  int64_t num_samples() const;
  int64_t num_tokens() const;
  // The temporary file being written (for tests).
  const std::string& temp_path() const;

  TokenCacheWriter(TokenCacheWriter&&) noexcept;
  TokenCacheWriter& operator=(TokenCacheWriter&&) noexcept;
  ~TokenCacheWriter();

  struct State;

 private:
  explicit TokenCacheWriter(std::unique_ptr<State> s);
  std::unique_ptr<State> state_;
};

// Writes `samples` to a cache at `path` (atomic, as TokenCacheWriter).
Status WriteTokenCache(const std::string& path, const CacheKey& key,
                       const std::vector<Sample>& samples);

// What LoadOrBuildTokenCache found at the path.
struct CacheReport {
  CacheProblem problem = CacheProblem::kNone;  // kNone: the existing cache was reused
  std::string detail;                          // OpenTokenCache's message when rebuilt
  bool rebuilt() const { return problem != CacheProblem::kNone; }
};

// Fills a writer with every sample of the dataset; an error abandons the build.
using TokenCacheBuildFn = std::function<Status(TokenCacheWriter&)>;

// Opens the cache at `path` if it is valid for `key`; otherwise (missing, other key or version,
// truncated, corrupt) builds it again with `build`, commits it and opens the result. `report`,
// if given, says which of the two happened and why. If `build` or the write fails, the error is
// returned and whatever was at `path` is left as it was. Concurrent callers for one path (e.g.
// all ranks at once) each build their own copy and the last rename wins; both are valid, but
// building on one rank and opening on the others after a barrier saves the work.
Result<TokenCache> LoadOrBuildTokenCache(const std::string& path, const CacheKey& key,
                                         const TokenCacheBuildFn& build,
                                         CacheReport* report = nullptr);

}  // namespace xt
