#include "xtuner/data/tokenizer_bpe.h"

#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>

#include "xtuner/core/json.h"
#include "xtuner/data/tokenizer_json.h"
#include "xtuner/data/tokenizer_unicode.h"

namespace xt::tok {

namespace {

inline uint64_t Hash(std::string_view s) { return XXH3_64bits(s.data(), s.size()); }

// Words longer than this (in bytes) are not cached, as in HF (MAX_LENGTH).
constexpr size_t kMaxCachedWord = 256;
// Words of at most this many symbols merge by scanning; longer ones use a heap.
constexpr size_t kMaxLinearMerge = 48;
constexpr uint32_t kNoRank = UINT32_MAX;

}  // namespace

// ---- StringIdMap ----

void StringIdMap::Grow() {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(std::max<size_t>(16, old.size() * 2), Slot{0, 0, 0, -1});
  const size_t mask = slots_.size() - 1;
  for (const Slot& s : old) {
    if (s.id < 0) continue;
    size_t i = s.hash & mask;
    while (slots_[i].id >= 0) i = (i + 1) & mask;
    slots_[i] = s;
  }
}

void StringIdMap::Insert(std::string_view key, int32_t id) {
  if ((size_ + 1) * 2 > slots_.size()) Grow();
  const uint64_t h = Hash(key);
  const size_t mask = slots_.size() - 1;
  size_t i = h & mask;
  for (; slots_[i].id >= 0; i = (i + 1) & mask) {
    Slot& s = slots_[i];
    if (s.hash == h && std::string_view(arena_).substr(s.off, s.len) == key) {
      s.id = id;
      return;
    }
  }
  slots_[i] = Slot{h, static_cast<uint32_t>(arena_.size()), static_cast<uint32_t>(key.size()), id};
  arena_.append(key);
  ++size_;
}

int32_t StringIdMap::Find(std::string_view key) const {
  if (slots_.empty()) return -1;
  const uint64_t h = Hash(key);
  const size_t mask = slots_.size() - 1;
  for (size_t i = h & mask; slots_[i].id >= 0; i = (i + 1) & mask) {
    const Slot& s = slots_[i];
    if (s.hash == h && s.len == key.size() &&
        std::string_view(arena_).substr(s.off, s.len) == key) {
      return s.id;
    }
  }
  return -1;
}

// ---- BpeCache ----

namespace {
constexpr size_t kCacheSlots = 1 << 16;
constexpr size_t kCacheMaxEntries = kCacheSlots / 2;
}  // namespace

BpeCache::BpeCache() : slots_(kCacheSlots, Slot{0, 0, 0, 0, 0}) {}

const int32_t* BpeCache::Find(std::string_view word, uint64_t h, uint32_t* n) const {
  const size_t mask = slots_.size() - 1;
  for (size_t i = h & mask; slots_[i].n != 0; i = (i + 1) & mask) {
    const Slot& s = slots_[i];
    if (s.hash == h && s.key_len == word.size() &&
        std::memcmp(keys_.data() + s.key_off, word.data(), word.size()) == 0) {
      *n = s.n;
      return ids_.data() + s.ids_off;
    }
  }
  return nullptr;
}

void BpeCache::Insert(std::string_view word, uint64_t h, const int32_t* ids, uint32_t n) {
  if (n == 0) return;
  if (size_ >= kCacheMaxEntries) {
    std::fill(slots_.begin(), slots_.end(), Slot{0, 0, 0, 0, 0});
    keys_.clear();
    ids_.clear();
    size_ = 0;
  }
  const size_t mask = slots_.size() - 1;
  size_t i = h & mask;
  while (slots_[i].n != 0) i = (i + 1) & mask;
  slots_[i] = Slot{h, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(word.size()),
                   static_cast<uint32_t>(ids_.size()), n};
  keys_.append(word);
  ids_.insert(ids_.end(), ids, ids + n);
  ++size_;
}

// ---- Merges: (left id, right id) -> (rank, merged id) ----

struct BpeModel::Merges {
  struct Slot {
    uint64_t key;  // UINT64_MAX: empty
    uint32_t rank;
    int32_t new_id;
  };
  std::vector<Slot> slots;
  int shift = 64;

  static uint64_t Key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  size_t Index(uint64_t key) const { return (key * 0x9E3779B97F4A7C15ull) >> shift; }

  void Reserve(size_t n) {
    size_t cap = 16;
    shift = 60;
    while (cap < n * 2) cap *= 2, --shift;
    slots.assign(cap, Slot{UINT64_MAX, 0, 0});
  }
  // Later entries overwrite earlier ones, as HF's HashMap does.
  void Insert(int32_t a, int32_t b, uint32_t rank, int32_t new_id) {
    const uint64_t k = Key(a, b);
    const size_t mask = slots.size() - 1;
    size_t i = Index(k);
    while (slots[i].key != UINT64_MAX && slots[i].key != k) i = (i + 1) & mask;
    slots[i] = Slot{k, rank, new_id};
  }
  // The rank of (a, b) (kNoRank when it does not merge) and the id it merges into.
  uint32_t Find(int32_t a, int32_t b, int32_t* new_id) const {
    const uint64_t k = Key(a, b);
    const size_t mask = slots.size() - 1;
    for (size_t i = Index(k); slots[i].key != UINT64_MAX; i = (i + 1) & mask) {
      if (slots[i].key == k) {
        *new_id = slots[i].new_id;
        return slots[i].rank;
      }
    }
    return kNoRank;
  }
};

BpeModel::BpeModel() = default;
BpeModel::~BpeModel() = default;
BpeModel::BpeModel(BpeModel&&) noexcept = default;
BpeModel& BpeModel::operator=(BpeModel&&) noexcept = default;

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

Result<BpeModel> BpeModel::Parse(const nlohmann::json& j) {
  if (!j.is_object()) return Status::Error("\"model\" is missing or not an object");
  std::string type = TypeOf(j);
  if (type.empty() && j.contains("merges")) type = "BPE";
  if (type != "BPE") return NotImplemented("model", j, "BPE");
  const std::string where = "model BPE";
  BpeModel m;
  XT_ASSIGN_OR_RETURN(double dropout, Field<double>(j, "dropout", where, 0.0));
  if (dropout > 0) return Status::Error(where + ": dropout is not implemented (it is random)");
  XT_ASSIGN_OR_RETURN(m.fuse_unk_, Field<bool>(j, "fuse_unk", where, false));
  XT_ASSIGN_OR_RETURN(m.byte_fallback_, Field<bool>(j, "byte_fallback", where, false));
  XT_ASSIGN_OR_RETURN(m.ignore_merges_, Field<bool>(j, "ignore_merges", where, false));
  XT_ASSIGN_OR_RETURN(m.prefix_, Field<std::string>(j, "continuing_subword_prefix", where, ""));
  XT_ASSIGN_OR_RETURN(m.suffix_, Field<std::string>(j, "end_of_word_suffix", where, ""));
  XT_ASSIGN_OR_RETURN(std::string unk, Field<std::string>(j, "unk_token", where, ""));

  // Vocabulary.
  auto vit = j.find("vocab");
  if (vit == j.end() || !vit->is_object()) return Status::Error(where + ": missing \"vocab\"");
  int64_t max_id = -1;
  for (auto it = vit->begin(); it != vit->end(); ++it) {
    if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() >= INT32_MAX) {
      return Status::Error(where + ": vocab[\"" + it.key() +
                           "\"] is not a valid id: " + DumpJson(*it));
    }
    max_id = std::max(max_id, it->get<int64_t>());
  }
  if (max_id >= (int64_t{1} << 22)) {
    return Status::Error(where + ": vocabulary ids up to " + std::to_string(max_id) +
                         " are implausibly large");
  }
  m.id_to_token_.resize(max_id + 1);
  m.has_id_.resize(max_id + 1);
  for (auto it = vit->begin(); it != vit->end(); ++it) {
    const auto id = it->get<int32_t>();
    m.vocab_.Insert(it.key(), id);
    m.id_to_token_[id] = it.key();
    m.has_id_[id] = true;
  }
  if (!unk.empty()) m.unk_id_ = m.vocab_.Find(unk);
  m.unk_missing_ = !unk.empty() && m.unk_id_ < 0;

  // Merges, ranked by position ("#version" lines do not count).
  auto mit = j.find("merges");
  if (mit == j.end() || !mit->is_array()) return Status::Error(where + ": missing \"merges\"");
  m.merges_ = std::make_unique<Merges>();
  m.merges_->Reserve(mit->size());
  uint32_t rank = 0;
  for (size_t i = 0; i < mit->size(); ++i) {
    const auto& e = (*mit)[i];
    std::string a, b;
    const std::string at = where + ": merges[" + std::to_string(i) + "]";
    if (e.is_string()) {
      const std::string s = e.get<std::string>();
      if (s.rfind("#version", 0) == 0) continue;
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        return Status::Error(at + ": expected two tokens separated by one space, got \"" + s +
                             "\"");
      }
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      return Status::Error(at + ": expected \"a b\" or [\"a\", \"b\"], got " +
                           DumpJson(e).substr(0, 200));
    }
    const int32_t ia = m.vocab_.Find(a), ib = m.vocab_.Find(b);
    if (ia < 0 || ib < 0) {
      return Status::Error(at + ": token \"" + (ia < 0 ? a : b) + "\" is not in the vocabulary");
    }
    if (b.size() < m.prefix_.size()) {
      return Status::Error(at + ": \"" + b + "\" is shorter than continuing_subword_prefix");
    }
    const std::string merged = a + b.substr(m.prefix_.size());
    const int32_t im = m.vocab_.Find(merged);
    if (im < 0)
      return Status::Error(at + ": merged token \"" + merged + "\" is not in the vocabulary");
    m.merges_->Insert(ia, ib, rank++, im);
  }

  // Byte-level and byte-fallback tables.
  const auto& chars = ByteToCharUtf8();
  for (int c = 0; c < 256; ++c) {
    m.byte_ids_[c] = m.vocab_.Find(chars[c]);
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", c);
    m.fallback_ids_[c] = m.vocab_.Find(name);
  }
  if (m.ignore_merges_) {
    for (size_t id = 0; id < m.id_to_token_.size(); ++id) {
      if (!m.has_id_[id]) continue;
      const std::string& t = m.id_to_token_[id];
      std::string raw;
      bool ok = true;
      for (size_t i = 0; i < t.size() && ok;) {
        uint32_t cp;
        i += DecodeUtf8(t.data() + i, &cp);
        const int byte = CharToByte(cp);
        ok = byte >= 0;
        raw += static_cast<char>(byte);
      }
      if (ok) m.raw_vocab_.Insert(raw, static_cast<int32_t>(id));
    }
  }
  return m;
}

void BpeModel::InitialSymbols(std::string_view word, bool raw_bytes,
                              std::vector<int32_t>* syms) const {
  int32_t pending_unk = -1;
  auto add = [&](int32_t id, std::string_view chr) {
    if (id >= 0) {
      if (pending_unk >= 0) syms->push_back(pending_unk);
      pending_unk = -1;
      syms->push_back(id);
      return;
    }
    if (byte_fallback_) {
      bool all = true;
      for (char c : chr) all = all && fallback_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all) {  // as HF: a pending unk is not flushed first
        for (char c : chr) syms->push_back(fallback_ids_[static_cast<unsigned char>(c)]);
        return;
      }
    }
    if (unk_id_ >= 0) {
      if (pending_unk >= 0 && !fuse_unk_) syms->push_back(pending_unk);
      pending_unk = unk_id_;
    } else if (unk_missing_) {
      syms->push_back(-1);  // reported by Tokenize
    }
  };
  if (raw_bytes) {
    const auto& chars = ByteToCharUtf8();
    for (char c : word) {
      const auto b = static_cast<unsigned char>(c);
      add(byte_ids_[b], chars[b]);
    }
  } else if (prefix_.empty() && suffix_.empty()) {
    for (size_t i = 0; i < word.size();) {
      const size_t len = Utf8Len(static_cast<unsigned char>(word[i]));
      const std::string_view chr = word.substr(i, len);
      add(vocab_.Find(chr), chr);
      i += len;
    }
  } else {
    std::string chr;
    for (size_t i = 0; i < word.size();) {
      const size_t len = Utf8Len(static_cast<unsigned char>(word[i]));
      chr.clear();
      if (i > 0) chr += prefix_;
      chr.append(word.substr(i, len));
      if (i + len == word.size()) chr += suffix_;
      add(vocab_.Find(chr), chr);
      i += len;
    }
  }
  if (pending_unk >= 0) syms->push_back(pending_unk);
}

void BpeModel::MergeWord(std::vector<int32_t>* syms) const {
  const Merges& M = *merges_;
  std::vector<int32_t>& s = *syms;
  size_t n = s.size();
  if (n < 2) return;
  if (n <= kMaxLinearMerge) {
    // ranks[i], merged[i]: the pair (s[i], s[i+1]).
    uint32_t ranks[kMaxLinearMerge];
    int32_t merged[kMaxLinearMerge];
    for (size_t i = 0; i + 1 < n; ++i) ranks[i] = M.Find(s[i], s[i + 1], &merged[i]);
    while (n > 1) {
      size_t best = 0;
      for (size_t i = 1; i + 1 < n; ++i) {
        if (ranks[i] < ranks[best]) best = i;
      }
      if (ranks[best] == kNoRank) break;
      s[best] = merged[best];
      for (size_t i = best + 1; i + 1 < n; ++i) s[i] = s[i + 1];
      for (size_t i = best + 1; i + 2 < n; ++i) {
        ranks[i] = ranks[i + 1];
        merged[i] = merged[i + 1];
      }
      --n;
      if (best + 1 < n) ranks[best] = M.Find(s[best], s[best + 1], &merged[best]);
      if (best > 0) ranks[best - 1] = M.Find(s[best - 1], s[best], &merged[best - 1]);
    }
    s.resize(n);
    return;
  }
  // HF's algorithm: a heap of candidate merges, lowest (rank, position) first; stale entries
  // are skipped when popped.
  struct Cand {
    uint32_t rank, pos;
    int32_t new_id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<int32_t> prev(n), next(n);
  std::vector<Cand> heap;
  heap.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = static_cast<int32_t>(i) - 1;
    next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
    int32_t id;
    if (i + 1 < n) {
      const uint32_t r = M.Find(s[i], s[i + 1], &id);
      if (r != kNoRank) heap.push_back({r, static_cast<uint32_t>(i), id});
    }
  }
  std::make_heap(heap.begin(), heap.end(), std::greater<>());
  std::vector<bool> alive(n, true);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    const Cand top = heap.back();
    heap.pop_back();
    const uint32_t p = top.pos;
    if (!alive[p] || next[p] < 0) continue;
    const int32_t q = next[p];
    int32_t id;
    if (M.Find(s[p], s[q], &id) == kNoRank || id != top.new_id) continue;
    s[p] = id;
    alive[q] = false;
    next[p] = next[q];
    if (next[q] >= 0) prev[next[q]] = static_cast<int32_t>(p);
    if (prev[p] >= 0) {
      const uint32_t r = M.Find(s[prev[p]], s[p], &id);
      if (r != kNoRank) {
        heap.push_back({r, static_cast<uint32_t>(prev[p]), id});
        std::push_heap(heap.begin(), heap.end(), std::greater<>());
      }
    }
    if (next[p] >= 0) {
      const uint32_t r = M.Find(s[p], s[next[p]], &id);
      if (r != kNoRank) {
        heap.push_back({r, p, id});
        std::push_heap(heap.begin(), heap.end(), std::greater<>());
      }
    }
  }
  size_t k = 0;
  for (size_t i = 0; i < n; ++i) {
    if (alive[i]) s[k++] = s[i];
  }
  s.resize(k);
}

bool BpeModel::Tokenize(std::string_view word, bool raw_bytes, BpeCache* cache,
                        std::vector<int32_t>* out) const {
  thread_local std::string mapped;
  if (raw_bytes && (!prefix_.empty() || !suffix_.empty())) {
    const auto& chars = ByteToCharUtf8();
    mapped.clear();
    for (char c : word) mapped += chars[static_cast<unsigned char>(c)];
    word = mapped;
    raw_bytes = false;
  }
  if (ignore_merges_) {
    const int32_t id = raw_bytes ? raw_vocab_.Find(word) : vocab_.Find(word);
    if (id >= 0) {
      out->push_back(id);
      return true;
    }
  }
  if (raw_bytes && word.size() == 1 && byte_ids_[static_cast<unsigned char>(word[0])] >= 0) {
    out->push_back(byte_ids_[static_cast<unsigned char>(word[0])]);
    return true;
  }
  const bool cacheable = word.size() < kMaxCachedWord;
  uint64_t h = 0;
  if (cacheable) {
    h = Hash(word);
    uint32_t n;
    if (const int32_t* ids = cache->Find(word, h, &n)) {
      out->insert(out->end(), ids, ids + n);
      return true;
    }
  }
  thread_local std::vector<int32_t> syms;
  syms.clear();
  InitialSymbols(word, raw_bytes, &syms);
  if (std::find(syms.begin(), syms.end(), -1) != syms.end()) return false;
  MergeWord(&syms);
  if (cacheable) cache->Insert(word, h, syms.data(), static_cast<uint32_t>(syms.size()));
  out->insert(out->end(), syms.begin(), syms.end());
  return true;
}

}  // namespace xt::tok
