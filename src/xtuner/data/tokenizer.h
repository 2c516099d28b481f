// Tokenizer: a Hugging Face tokenizer.json, reproducing HF `tokenizers` exactly:
//   added/special tokens (matched first, on the raw text) -> normalizer -> pre-tokenizer ->
//   BPE model -> post-processor (BOS/EOS) ; and the decoder for the way back.
// Components not implemented are an error at load time that names them.
//
// Copies are cheap (shared immutable state). All const methods are thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "xtuner/core/status.h"

namespace xt {

// The tokenizer.json that `path` names: `path` itself, or the tokenizer.json in it where it is a
// directory (a Hugging Face model's, as from_pretrained takes one).
std::string TokenizerJsonPath(const std::string& path);

class Tokenizer {
 public:
  // `path` is a tokenizer.json file or a directory holding one.
  static Result<Tokenizer> FromFile(const std::string& path);
  // `json_text` is the content of a tokenizer.json; `source` names it in errors.
  static Result<Tokenizer> FromJson(std::string_view json_text, const std::string& source);

  // As HF `Tokenizer.encode(text, add_special_tokens=...).ids`: special and added tokens that
  // appear in the text are matched as such; add_special_tokens applies the post-processor.
  // Invalid UTF-8 is an error (HF cannot take it either).
  Result<std::vector<int32_t>> Encode(std::string_view text, bool add_special_tokens = false) const;
  // As HF `Tokenizer.decode(ids, skip_special_tokens=...)`. Ids outside the vocabulary are an
  // error.
  Result<std::string> Decode(const std::vector<int32_t>& ids,
                             bool skip_special_tokens = false) const;

  // The id of a token string (model vocabulary or added token), if any.
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The token string of an id ("" when out of range).
  std::string IdToToken(int32_t id) const;
  // 1 + the largest id (model vocabulary and added tokens).
  int64_t vocab_size() const;
  bool IsSpecial(int32_t id) const;
  const std::string& source() const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace xt
