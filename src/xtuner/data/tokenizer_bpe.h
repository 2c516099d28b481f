// The BPE model of tokenizer.json, as HF `tokenizers`' models/bpe: a word starts as one symbol
// per character (continuing_subword_prefix / end_of_word_suffix added), a character missing
// from the vocabulary becomes its <0xHH> byte tokens (byte_fallback) or unk_token (fused with
// fuse_unk) or is dropped; then the pair with the lowest merge rank is merged, leftmost first,
// until no pair has a rank. ignore_merges: a word that is itself in the vocabulary is one token.
//
// In byte-level mode (raw_bytes) a word is given as raw bytes and each byte is the character
// GPT-2's alphabet writes it as; the result equals mapping the bytes first.
//
// Immutable after Parse; Tokenize is thread-safe given one BpeCache per thread.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "xtuner/core/status.h"

namespace xt::tok {

// String -> id, open addressing over one arena (no allocation per lookup).
class StringIdMap {
 public:
  // Inserts or overwrites.
  void Insert(std::string_view key, int32_t id);
  // The id of `key`, or -1.
  int32_t Find(std::string_view key) const;
  size_t size() const { return size_; }

 private:
  struct Slot {
    uint64_t hash;
    uint32_t off, len;
    int32_t id;  // -1: empty
  };
  void Grow();
  std::vector<Slot> slots_;
  std::string arena_;
  size_t size_ = 0;
};

// A per-thread cache of merged words: word -> ids. Bounded; cleared when full.
class BpeCache {
 public:
  BpeCache();
  // The cached ids of `word` (and their count), or nullptr.
  const int32_t* Find(std::string_view word, uint64_t hash, uint32_t* n) const;
  void Insert(std::string_view word, uint64_t hash, const int32_t* ids, uint32_t n);

 private:
  struct Slot {
    uint64_t hash;
    uint32_t key_off, key_len, ids_off, n;  // n == 0: empty
  };
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int32_t> ids_;
  size_t size_ = 0;
};

class BpeModel {
 public:
  BpeModel();
  ~BpeModel();
  BpeModel(BpeModel&&) noexcept;
  BpeModel& operator=(BpeModel&&) noexcept;

  // The model that the JSON object "model" describes. Another model type (WordPiece, Unigram,
  // WordLevel), dropout or a merge of tokens that are not in the vocabulary is an error.
  static Result<BpeModel> Parse(const nlohmann::json& j);

  // Appends the ids of `word` (non-empty) to `out`. False when the word needs unk_token and
  // unk_token is not in the vocabulary (HF fails the same way).
  bool Tokenize(std::string_view word, bool raw_bytes, BpeCache* cache,
                std::vector<int32_t>* out) const;

  // -1 when absent.
  int32_t TokenToId(std::string_view token) const { return vocab_.Find(token); }
  // nullptr when no token has this id.
  const std::string* IdToToken(int32_t id) const;
  // HF's get_vocab_size(): the number of entries.
  size_t vocab_entries() const { return vocab_.size(); }
  int64_t max_id() const { return static_cast<int64_t>(id_to_token_.size()) - 1; }

  struct Merges;

 private:
  // Merges `syms` in place (ids of the symbols of one word).
  void MergeWord(std::vector<int32_t>* syms) const;
  // The initial symbols of `word` (characters, or bytes in raw mode), appended to `syms`.
  void InitialSymbols(std::string_view word, bool raw_bytes, std::vector<int32_t>* syms) const;

  StringIdMap vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  std::unique_ptr<Merges> merges_;
  StringIdMap raw_vocab_;      // byte-level: raw bytes -> id (for ignore_merges)
  int32_t byte_ids_[256];      // byte-level: the id of each byte's character, or -1
  int32_t fallback_ids_[256];  // the id of "<0xHH>", or -1
  int32_t unk_id_ = -1;
  bool unk_missing_ = false;  // unk_token is set but not in the vocabulary
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  std::string prefix_, suffix_;  // continuing_subword_prefix, end_of_word_suffix
};

}  // namespace xt::tok
