#include "xtuner/data/token_cache.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>

#include "xtuner/core/file_util.h"
#include "xtuner/core/mapped_file.h"

namespace xt {

static_assert(std::endian::native == std::endian::little,
              "the token cache is little-endian and read in place");

// The layout (docs/formats.md, "Tokenized cache"):
//   [0, 128)            header (below)
//   [128, 128 + 8T)     for each sample: input_ids (n int32), then labels (n int32)
//   [.., + 8(N + 1))    offsets (N + 1 int64): sample i holds tokens [off[i], off[i + 1])
//   last 16 bytes       trailer: "XTTOKEND", then the file size (u64)
// The payload is everything between header and trailer; XXH3-64 covers it.
namespace {

constexpr char kMagic[8] = {'X', 'T', 'T', 'O', 'K', 'E', 'N', 'S'};
constexpr char kEndMagic[8] = {'X', 'T', 'T', 'O', 'K', 'E', 'N', 'D'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 128;
constexpr size_t kTrailerBytes = 16;

// Header field offsets.
constexpr size_t kOffMagic = 0;         // char[8]
constexpr size_t kOffVersion = 8;       // u32
constexpr size_t kOffHeaderBytes = 12;  // u32, = 128
constexpr size_t kOffKeyLo = 16;        // u64
constexpr size_t kOffKeyHi = 24;        // u64
constexpr size_t kOffSamples = 32;      // u64 N
constexpr size_t kOffTokens = 40;       // u64 T
constexpr size_t kOffMasked = 48;       // u64 labels == -100
constexpr size_t kOffPayload = 56;      // u64 payload bytes = 8T + 8(N + 1)
constexpr size_t kOffPayloadSum = 64;   // u64 XXH3-64 of the payload
                                        // [72, 120) reserved, zero
constexpr size_t kOffHeaderSum = 120;   // u64 XXH3-64 of bytes [0, 120)

template <class T>
T Get(const uint8_t* p, size_t off) {
  T v;
  std::memcpy(&v, p + off, sizeof(T));
  return v;
}
template <class T>
void Put(uint8_t* p, size_t off, T v) {
  std::memcpy(p + off, &v, sizeof(T));
}

std::string Hex64(uint64_t v) {
  char s[17];
  std::snprintf(s, sizeof(s), "%016llx", static_cast<unsigned long long>(v));
  return s;
}

Status WriteAll(int fd, const void* data, size_t n) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t(1) << 30));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      if (w == 0) errno = EIO;
      return Status::Error(ErrnoText());
    }
    p += w;
    n -= size_t(w);
  }
  return Status::OK();
}

Status PWriteAll(int fd, const void* data, size_t n, off_t at) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, n, at);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      if (w == 0) errno = EIO;
      return Status::Error(ErrnoText());
    }
    p += w;
    n -= size_t(w);
    at += w;
  }
  return Status::OK();
}

}  // namespace

// ------------------------------------------------------------------------------------ CacheKey

std::string CacheKey::Hex() const { return Hex64(hi) + Hex64(lo); }

struct CacheKeyBuilder::State {
  XXH3_state_t* xxh = nullptr;
  std::string poisoned;  // the error of a failed AddFile, after which the key is meaningless
  State() {
    xxh = XXH3_createState();
    XT_CHECK(xxh != nullptr, "XXH3_createState: out of memory");
    XXH3_128bits_reset(xxh);
    static constexpr char kDomain[] = "xtuner token cache key";
    XXH3_128bits_update(xxh, kDomain, sizeof(kDomain));
  }
  ~State() { XXH3_freeState(xxh); }
  void U64(uint64_t v) { XXH3_128bits_update(xxh, &v, 8); }
};

CacheKeyBuilder::CacheKeyBuilder() : state_(std::make_unique<State>()) {}
CacheKeyBuilder::~CacheKeyBuilder() = default;

CacheKeyBuilder& CacheKeyBuilder::AddBytes(std::string_view name, std::string_view bytes) {
  state_->U64(name.size());
  XXH3_128bits_update(state_->xxh, name.data(), name.size());
  state_->U64(bytes.size());
  XXH3_128bits_update(state_->xxh, bytes.data(), bytes.size());
  return *this;
}

Status CacheKeyBuilder::AddFile(std::string_view name, const std::string& path) {
  if (!state_->poisoned.empty()) return Status::Error(state_->poisoned);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::Error("cache key: cannot open '" + path + "': " + ErrnoText());
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    std::string err = ErrnoText();
    ::close(fd);
    return Status::Error("cache key: cannot stat '" + path + "': " + err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::Error("cache key: '" + path + "' is not a regular file");
  }
  // From here on the hash state changes: any failure poisons the builder.
  const uint64_t size = uint64_t(st.st_size);
  state_->U64(name.size());
  XXH3_128bits_update(state_->xxh, name.data(), name.size());
  state_->U64(size);
  std::vector<char> buf(size_t(1) << 20);
  uint64_t total = 0;
  std::string error;
  for (;;) {
    ssize_t r = ::read(fd, buf.data(), buf.size());
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      error = "cache key: cannot read '" + path + "': " + ErrnoText();
      break;
    }
    if (r == 0) break;
    XXH3_128bits_update(state_->xxh, buf.data(), size_t(r));
    total += uint64_t(r);
  }
  ::close(fd);
  if (error.empty() && total != size) {
    error = "cache key: '" + path + "' changed while being read (" + std::to_string(size) +
            " bytes at open, " + std::to_string(total) + " read)";
  }
  if (!error.empty()) {
    state_->poisoned = error;
    return Status::Error(error);
  }
  return Status::OK();
}

CacheKey CacheKeyBuilder::Finish() const {
  XT_CHECK(state_->poisoned.empty(),
           "CacheKeyBuilder::Finish after a failed AddFile: " + state_->poisoned);
  XXH128_hash_t h = XXH3_128bits_digest(state_->xxh);
  return CacheKey{h.low64, h.high64};
}

// ---------------------------------------------------------------------------------- TokenCache

const char* CacheProblemName(CacheProblem p) {
  switch (p) {
    case CacheProblem::kNone:
      return "none";
    case CacheProblem::kMissing:
      return "missing";
    case CacheProblem::kUnreadable:
      return "unreadable";
    case CacheProblem::kNotACache:
      return "not a token cache";
    case CacheProblem::kVersionMismatch:
      return "version mismatch";
    case CacheProblem::kKeyMismatch:
      return "key mismatch";
    case CacheProblem::kTruncated:
      return "truncated";
    case CacheProblem::kCorrupt:
      return "corrupt";
  }
  return "?";
}

struct TokenCache::State {
  std::shared_ptr<const MappedFile> mapping;
  std::string path;
  CacheKey key;
  int64_t samples = 0, tokens = 0, masked = 0;
  const int32_t* data = nullptr;     // (2T): per sample, ids then labels
  const int64_t* offsets = nullptr;  // (N + 1)
};

int64_t TokenCache::num_samples() const { return state_->samples; }
int64_t TokenCache::num_tokens() const { return state_->tokens; }
int64_t TokenCache::num_masked_tokens() const { return state_->masked; }
const CacheKey& TokenCache::key() const { return state_->key; }
const std::string& TokenCache::path() const { return state_->path; }

int64_t TokenCache::length(int64_t i) const {
  XT_CHECK(i >= 0 && i < state_->samples, "token cache: sample " + std::to_string(i) +
                                              " out of range [0, " +
                                              std::to_string(state_->samples) + ")");
  return state_->offsets[i + 1] - state_->offsets[i];
}

SampleView TokenCache::sample(int64_t i) const {
  const int64_t n = length(i);
  const int32_t* ids = state_->data + 2 * state_->offsets[i];
  return SampleView{{ids, size_t(n)}, {ids + n, size_t(n)}};
}

std::vector<int64_t> TokenCache::lengths() const {
  std::vector<int64_t> out(size_t(state_->samples));
  for (int64_t i = 0; i < state_->samples; ++i) {
    out[i] = state_->offsets[i + 1] - state_->offsets[i];
  }
  return out;
}

Sample TokenCache::Copy(int64_t i) const {
  SampleView v = sample(i);
  return Sample{{v.input_ids.begin(), v.input_ids.end()}, {v.labels.begin(), v.labels.end()}};
}

Result<TokenCache> OpenTokenCache(const std::string& path, const CacheKey& expected,
                                  CacheProblem* problem) {
  CacheProblem ignored;
  CacheProblem& why = problem ? *problem : ignored;
  why = CacheProblem::kNone;
  auto fail = [&](CacheProblem p, const std::string& msg) {
    why = p;
    return Status::Error("token cache '" + path + "': " + msg);
  };

  bool missing = false;
  auto mapped = MappedFile::Open(path, "token cache", &missing);
  if (!mapped.ok()) {
    if (missing) return fail(CacheProblem::kMissing, "does not exist");
    why = CacheProblem::kUnreadable;
    return mapped.status();
  }
  std::shared_ptr<const MappedFile> mapping = *mapped;
  const size_t size = mapping->size();
  if (size < kHeaderBytes + kTrailerBytes) {
    // A prefix of a cache (an interrupted copy) or something else?
    const size_t n = std::min(size, sizeof(kMagic));
    if (std::memcmp(mapping->data(), kMagic, n) == 0) {
      return fail(CacheProblem::kTruncated, std::to_string(size) +
                                                " bytes, shorter than a header and trailer (" +
                                                std::to_string(kHeaderBytes + kTrailerBytes) + ")");
    }
    return fail(CacheProblem::kNotACache,
                "too short (" + std::to_string(size) + " bytes) and no token cache magic");
  }
  const uint8_t* p = mapping->data();

  if (std::memcmp(p + kOffMagic, kMagic, sizeof(kMagic)) != 0) {
    return fail(CacheProblem::kNotACache, "no token cache magic (\"XTTOKENS\") at byte 0");
  }
  const uint32_t version = Get<uint32_t>(p, kOffVersion);
  if (version != kVersion) {
    return fail(CacheProblem::kVersionMismatch, "format version " + std::to_string(version) +
                                                    ", this build reads version " +
                                                    std::to_string(kVersion));
  }
  if (Get<uint64_t>(p, kOffHeaderSum) != XXH3_64bits(p, kOffHeaderSum)) {
    return fail(CacheProblem::kCorrupt, "header checksum mismatch");
  }
  if (Get<uint32_t>(p, kOffHeaderBytes) != kHeaderBytes) {
    return fail(CacheProblem::kCorrupt, "header size " +
                                            std::to_string(Get<uint32_t>(p, kOffHeaderBytes)) +
                                            ", expected " + std::to_string(kHeaderBytes));
  }
  const CacheKey key{Get<uint64_t>(p, kOffKeyLo), Get<uint64_t>(p, kOffKeyHi)};
  if (key != expected) {
    return fail(CacheProblem::kKeyMismatch,
                "built for key " + key.Hex() + ", expected " + expected.Hex() +
                    " (the data, tokenizer, chat template or options changed)");
  }
  const uint64_t n = Get<uint64_t>(p, kOffSamples);
  const uint64_t t = Get<uint64_t>(p, kOffTokens);
  const uint64_t masked = Get<uint64_t>(p, kOffMasked);
  const uint64_t payload = Get<uint64_t>(p, kOffPayload);
  const uint64_t body = size - kHeaderBytes - kTrailerBytes;
  if (payload > body) {
    return fail(CacheProblem::kTruncated,
                std::to_string(size) + " bytes, the header says " +
                    std::to_string(payload + kHeaderBytes + kTrailerBytes));
  }
  if (payload < body) {
    return fail(CacheProblem::kCorrupt,
                std::to_string(body - payload) + " bytes more than the header says");
  }
  const uint8_t* trailer = p + size - kTrailerBytes;
  if (std::memcmp(trailer, kEndMagic, sizeof(kEndMagic)) != 0 ||
      Get<uint64_t>(trailer, 8) != size) {
    return fail(CacheProblem::kCorrupt, "bad trailer (no \"XTTOKEND\" and file size at the end)");
  }
  // payload = 8T + 8(N + 1), with every term bounded by the file size.
  if (payload % 8 != 0 || n >= payload / 8 || t != payload / 8 - (n + 1) || masked > t) {
    return fail(CacheProblem::kCorrupt, "inconsistent counts in the header (" + std::to_string(n) +
                                            " samples, " + std::to_string(t) + " tokens, " +
                                            std::to_string(payload) + " payload bytes)");
  }
  const uint8_t* body_ptr = p + kHeaderBytes;
  const uint64_t sum = XXH3_64bits(body_ptr, payload);
  if (sum != Get<uint64_t>(p, kOffPayloadSum)) {
    return fail(CacheProblem::kCorrupt, "payload checksum mismatch (XXH3-64 " + Hex64(sum) +
                                            ", header says " +
                                            Hex64(Get<uint64_t>(p, kOffPayloadSum)) + ")");
  }
  const auto* offsets = reinterpret_cast<const int64_t*>(body_ptr + 8 * t);
  if (offsets[0] != 0 || offsets[n] != int64_t(t)) {
    return fail(CacheProblem::kCorrupt,
                "offsets table does not span [0, " + std::to_string(t) + "]");
  }
  for (uint64_t i = 0; i < n; ++i) {
    if (offsets[i + 1] <= offsets[i]) {
      return fail(CacheProblem::kCorrupt,
                  "offsets table not increasing at sample " + std::to_string(i));
    }
  }

  auto state = std::make_shared<TokenCache::State>();
  state->mapping = std::move(mapping);
  state->path = path;
  state->key = key;
  state->samples = int64_t(n);
  state->tokens = int64_t(t);
  state->masked = int64_t(masked);
  state->data = reinterpret_cast<const int32_t*>(body_ptr);
  state->offsets = offsets;
  return TokenCache(std::move(state));
}

// ---------------------------------------------------------------------------- TokenCacheWriter

struct TokenCacheWriter::State {
  std::string path, tmp;
  CacheKey key;
  int fd = -1;
  bool finished = false;   // committed, or failed for good
  bool committed = false;  // renamed into place: the temporary file no longer exists
  std::vector<uint8_t> buf;
  XXH3_state_t* xxh = nullptr;
  std::vector<int64_t> offsets{0};
  int64_t masked = 0;
  uint64_t payload = 0;  // payload bytes so far

  ~State() {
    if (fd >= 0) ::close(fd);
    if (!committed && !tmp.empty()) ::unlink(tmp.c_str());
    if (xxh) XXH3_freeState(xxh);
  }

  Status Error(const std::string& what) {
    finished = true;
    return Status::Error("writing token cache '" + path + "' (via '" + tmp + "'): " + what);
  }
  Status Flush() {
    if (buf.empty()) return Status::OK();
    Status s = WriteAll(fd, buf.data(), buf.size());
    buf.clear();
    return s.ok() ? s : Error("cannot write: " + s.message());
  }
  // Appends payload bytes (checksummed).
  Status Append(const void* data, size_t n) {
    XXH3_64bits_update(xxh, data, n);
    payload += n;
    const auto* p = static_cast<const uint8_t*>(data);
    buf.insert(buf.end(), p, p + n);
    return buf.size() >= (size_t(1) << 20) ? Flush() : Status::OK();
  }
};

TokenCacheWriter::TokenCacheWriter(std::unique_ptr<State> s) : state_(std::move(s)) {}
TokenCacheWriter::TokenCacheWriter(TokenCacheWriter&&) noexcept = default;
TokenCacheWriter& TokenCacheWriter::operator=(TokenCacheWriter&&) noexcept = default;
TokenCacheWriter::~TokenCacheWriter() = default;

int64_t TokenCacheWriter::num_samples() const { return int64_t(state_->offsets.size()) - 1; }
int64_t TokenCacheWriter::num_tokens() const { return state_->offsets.back(); }
const std::string& TokenCacheWriter::temp_path() const { return state_->tmp; }

Result<TokenCacheWriter> TokenCacheWriter::Create(const std::string& path, const CacheKey& key) {
  auto s = std::make_unique<State>();
  s->path = path;
  s->key = key;
  std::random_device rd;
  const uint64_t nonce = (uint64_t(rd()) << 32) ^ rd();
  s->tmp = path + ".tmp." + std::to_string(::getpid()) + "." + Hex64(nonce);
  s->fd = ::open(s->tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (s->fd < 0) {
    std::string err = ErrnoText();
    s->tmp.clear();  // not ours to remove
    return Status::Error("writing token cache '" + path +
                         "': cannot create a temporary file: " + err);
  }
  s->xxh = XXH3_createState();
  XT_CHECK(s->xxh != nullptr, "XXH3_createState: out of memory");
  XXH3_64bits_reset(s->xxh);
  // A zero header: the file is not a cache until Commit writes the real one.
  s->buf.assign(kHeaderBytes, 0);
  s->buf.reserve((size_t(1) << 20) + 4096);
  return TokenCacheWriter(std::move(s));
}

Status TokenCacheWriter::Add(std::span<const int32_t> input_ids, std::span<const int32_t> labels) {
  State& s = *state_;
  auto bad = [&](const std::string& what) {
    return Status::Error("writing token cache '" + s.path + "': sample " +
                         std::to_string(num_samples()) + " " + what);
  };
  if (s.finished) return Status::Error("writing token cache '" + s.path + "': already finished");
  if (input_ids.size() != labels.size()) {
    return bad("has " + std::to_string(input_ids.size()) + " input_ids but " +
               std::to_string(labels.size()) + " labels");
  }
  if (input_ids.empty()) return bad("is empty");
  int64_t masked = 0;
  for (size_t i = 0; i < input_ids.size(); ++i) {
    if (input_ids[i] < 0) {
      return bad("has token id " + std::to_string(input_ids[i]) + " at position " +
                 std::to_string(i));
    }
    if (labels[i] < 0 && labels[i] != kIgnoredLabel) {
      return bad("has label " + std::to_string(labels[i]) + " at position " + std::to_string(i) +
                 " (labels are token ids or -100)");
    }
    masked += labels[i] == kIgnoredLabel;
  }
  XT_RETURN_IF_ERROR(s.Append(input_ids.data(), input_ids.size_bytes()));
  XT_RETURN_IF_ERROR(s.Append(labels.data(), labels.size_bytes()));
  s.masked += masked;
  s.offsets.push_back(s.offsets.back() + int64_t(input_ids.size()));
  return Status::OK();
}

Status TokenCacheWriter::Commit() {
  State& s = *state_;
  if (s.finished) return Status::Error("writing token cache '" + s.path + "': already finished");
  const uint64_t n = uint64_t(num_samples()), t = uint64_t(num_tokens());
  XT_RETURN_IF_ERROR(s.Append(s.offsets.data(), s.offsets.size() * sizeof(int64_t)));
  XT_RETURN_IF_ERROR(s.Flush());
  const uint64_t file_size = kHeaderBytes + s.payload + kTrailerBytes;
  uint8_t trailer[kTrailerBytes];
  std::memcpy(trailer, kEndMagic, sizeof(kEndMagic));
  Put<uint64_t>(trailer, 8, file_size);
  if (Status w = WriteAll(s.fd, trailer, sizeof(trailer)); !w.ok()) {
    return s.Error("cannot write: " + w.message());
  }

  uint8_t header[kHeaderBytes] = {};
  std::memcpy(header + kOffMagic, kMagic, sizeof(kMagic));
  Put<uint32_t>(header, kOffVersion, kVersion);
  Put<uint32_t>(header, kOffHeaderBytes, uint32_t(kHeaderBytes));
  Put<uint64_t>(header, kOffKeyLo, s.key.lo);
  Put<uint64_t>(header, kOffKeyHi, s.key.hi);
  Put<uint64_t>(header, kOffSamples, n);
  Put<uint64_t>(header, kOffTokens, t);
  Put<uint64_t>(header, kOffMasked, uint64_t(s.masked));
  Put<uint64_t>(header, kOffPayload, s.payload);
  Put<uint64_t>(header, kOffPayloadSum, XXH3_64bits_digest(s.xxh));
  Put<uint64_t>(header, kOffHeaderSum, XXH3_64bits(header, kOffHeaderSum));
  // The header goes last: until it is written the file has no magic.
  if (Status w = PWriteAll(s.fd, header, sizeof(header), 0); !w.ok()) {
    return s.Error("cannot write the header: " + w.message());
  }
  if (::fsync(s.fd) != 0) return s.Error("cannot fsync: " + ErrnoText());
  int rc = ::close(s.fd);
  s.fd = -1;
  if (rc != 0) return s.Error("cannot close: " + ErrnoText());
  if (::rename(s.tmp.c_str(), s.path.c_str()) != 0) {
    return s.Error("cannot rename into place: " + ErrnoText());
  }
  s.committed = true;
  s.finished = true;
  // Make the rename durable (best effort: some file systems refuse to fsync a directory).
  std::string dir = std::filesystem::path(s.path).parent_path().string();
  int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
  return Status::OK();
}

Status WriteTokenCache(const std::string& path, const CacheKey& key,
                       const std::vector<Sample>& samples) {
  XT_ASSIGN_OR_RETURN(TokenCacheWriter w, TokenCacheWriter::Create(path, key));
  for (const Sample& s : samples) XT_RETURN_IF_ERROR(w.Add(s));
  return w.Commit();
}

Result<TokenCache> LoadOrBuildTokenCache(const std::string& path, const CacheKey& key,
                                         const TokenCacheBuildFn& build, CacheReport* report) {
  CacheReport ignored;
  CacheReport& r = report ? *report : ignored;
  r = CacheReport{};
  Result<TokenCache> existing = OpenTokenCache(path, key, &r.problem);
  if (existing.ok()) return existing;
  r.detail = existing.status().message();

  XT_ASSIGN_OR_RETURN(TokenCacheWriter w, TokenCacheWriter::Create(path, key));
  Status built = build(w);
  if (!built.ok()) return built.With("building token cache '" + path + "'");
  XT_RETURN_IF_ERROR(w.Commit());
  CacheProblem again;
  Result<TokenCache> fresh = OpenTokenCache(path, key, &again);
  if (!fresh.ok()) return fresh.status().With("reopening the token cache just built");
  return fresh;
}

}  // namespace xt
