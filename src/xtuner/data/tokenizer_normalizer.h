// Normalizers of tokenizer.json: NFC, NFD, NFKC, NFKD (utf8proc), Lowercase, Strip, Replace,
// Prepend and Sequence of them. HF applies the normalizer to each piece of text between added
// tokens that are matched on the raw text, never across them.
#pragma once

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>

#include "xtuner/core/status.h"

namespace xt::tok {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Rewrites `s` (valid UTF-8) in place; `tmp` is scratch space. Thread-safe.
  virtual void Apply(std::string* s, std::string* tmp) const = 0;
};

// Builds the normalizer that the JSON object `j` describes (null gives nullptr). An unknown or
// unimplemented type is an error naming it.
Result<std::unique_ptr<Normalizer>> ParseNormalizer(const nlohmann::json& j);

// Unicode normalization of `in` (valid UTF-8) into `out` (cleared first); `utf8proc_options` are
// utf8proc's flags (UTF8PROC_COMPOSE for NFC, | UTF8PROC_COMPAT for NFKC, ...).
void UnicodeNormalize(std::string_view in, int utf8proc_options, std::string* out);

}  // namespace xt::tok
