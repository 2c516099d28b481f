#include "xtuner/data/tokenizer_normalizer.h"

#include <utf8proc.h>

#include <cstdlib>
#include <vector>

#include "xtuner/data/tokenizer_json.h"
#include "xtuner/data/tokenizer_regex.h"
#include "xtuner/data/tokenizer_unicode.h"

namespace xt::tok {

namespace {

constexpr const char* kSupportedNormalizers =
    "NFC, NFD, NFKC, NFKD, Lowercase, Strip, Replace, Prepend, Sequence";

class UnicodeFormNormalizer : public Normalizer {
 public:
  explicit UnicodeFormNormalizer(int options) : options_(options) {}
  void Apply(std::string* s, std::string* tmp) const override {
    UnicodeNormalize(*s, options_, tmp);
    s->swap(*tmp);
  }

 private:
  int options_;
};

class LowercaseNormalizer : public Normalizer {
 public:
  void Apply(std::string* s, std::string* tmp) const override {
    tmp->clear();
    for (size_t i = 0; i < s->size();) {
      const auto c = static_cast<unsigned char>((*s)[i]);
      if (c < 0x80) {
        tmp->push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : static_cast<char>(c));
        ++i;
        continue;
      }
      uint32_t cp;
      i += DecodeUtf8(s->data() + i, &cp);
      AppendLowercase(cp, tmp);
    }
    s->swap(*tmp);
  }
};

// Trims White_Space characters from either end.
class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void Apply(std::string* s, std::string* tmp) const override {
    size_t a = 0, b = s->size();
    while (left_ && a < b) {
      uint32_t cp;
      const int n = DecodeUtf8(s->data() + a, &cp);
      if (!IsWhiteSpace(cp)) break;
      a += n;
    }
    while (right_ && b > a) {
      const uint32_t cp = LastChar(std::string_view(*s).substr(a, b - a));
      if (!IsWhiteSpace(cp)) break;
      b -= cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    }
    *s = s->substr(a, b - a);
  }

 private:
  bool left_, right_;
};

// Every match of the pattern becomes `content`.
class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(Regex re, std::string content)
      : re_(std::move(re)), content_(std::move(content)) {}
  void Apply(std::string* s, std::string* tmp) const override {
    thread_local std::vector<Span> spans;
    spans.clear();
    re_.FindMatches(*s, &spans);
    tmp->clear();
    for (const Span& sp : spans) {
      if (sp.match) {
        tmp->append(content_);
      } else {
        tmp->append(*s, sp.start, sp.end - sp.start);
      }
    }
    s->swap(*tmp);
  }

 private:
  Regex re_;
  std::string content_;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void Apply(std::string* s, std::string* tmp) const override {
    if (!s->empty()) s->insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts)
      : parts_(std::move(parts)) {}
  void Apply(std::string* s, std::string* tmp) const override {
    for (const auto& p : parts_) p->Apply(s, tmp);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

}  // namespace

void UnicodeNormalize(std::string_view in, int options, std::string* out) {
  out->clear();
  out->reserve(in.size());
  const size_t n = in.size();
  // Characters that every form leaves as they are and that never combine with what precedes
  // them: ASCII, and what HF's older Unicode data does not know (IsNormalizationInert). Only
  // the runs between them go through utf8proc.
  auto stable_len = [&](size_t i) -> int {
    const auto b = static_cast<unsigned char>(in[i]);
    if (b < 0x80) return 1;
    uint32_t cp;
    const int len = DecodeUtf8(in.data() + i, &cp);
    return IsNormalizationInert(cp) ? len : 0;
  };
  size_t i = 0;
  while (i < n) {
    size_t j = i;
    for (int len; j < n && (len = stable_len(j)) > 0;) j += len;
    if (j == n) {
      out->append(in.substr(i));
      break;
    }
    // The ASCII character just before the run may compose with it (e + U+0301).
    const size_t seg = j > i && static_cast<unsigned char>(in[j - 1]) < 0x80 ? j - 1 : j;
    out->append(in.substr(i, seg - i));
    size_t k = j;
    while (k < n && stable_len(k) == 0) k += Utf8Len(static_cast<unsigned char>(in[k]));
    utf8proc_uint8_t* dst = nullptr;
    const utf8proc_ssize_t len =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(in.data() + seg),
                     static_cast<utf8proc_ssize_t>(k - seg), &dst,
                     static_cast<utf8proc_option_t>(options | UTF8PROC_STABLE));
    if (len >= 0) {
      out->append(reinterpret_cast<const char*>(dst), static_cast<size_t>(len));
    } else {
      out->append(in.substr(seg, k - seg));  // cannot happen on valid UTF-8
    }
    std::free(dst);
    i = k;
  }
}

Result<std::unique_ptr<Normalizer>> ParseNormalizer(const nlohmann::json& j) {
  if (j.is_null()) return std::unique_ptr<Normalizer>();
  if (!j.is_object()) return NotImplemented("normalizer", j, kSupportedNormalizers);
  const std::string type = TypeOf(j);
  const std::string where = "normalizer " + type;
  if (type == "NFC")
    return std::unique_ptr<Normalizer>(new UnicodeFormNormalizer(UTF8PROC_COMPOSE));
  if (type == "NFD")
    return std::unique_ptr<Normalizer>(new UnicodeFormNormalizer(UTF8PROC_DECOMPOSE));
  if (type == "NFKC") {
    return std::unique_ptr<Normalizer>(
        new UnicodeFormNormalizer(UTF8PROC_COMPOSE | UTF8PROC_COMPAT));
  }
  if (type == "NFKD") {
    return std::unique_ptr<Normalizer>(
        new UnicodeFormNormalizer(UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT));
  }
  if (type == "Lowercase") return std::unique_ptr<Normalizer>(new LowercaseNormalizer());
  if (type == "Strip") {
    XT_ASSIGN_OR_RETURN(bool left, Field<bool>(j, "strip_left", where, true));
    XT_ASSIGN_OR_RETURN(bool right, Field<bool>(j, "strip_right", where, true));
    return std::unique_ptr<Normalizer>(new StripNormalizer(left, right));
  }
  if (type == "Replace") {
    XT_ASSIGN_OR_RETURN(Regex re, PatternField(j, where));
    XT_ASSIGN_OR_RETURN(std::string content, RequiredField<std::string>(j, "content", where));
    return std::unique_ptr<Normalizer>(new ReplaceNormalizer(std::move(re), std::move(content)));
  }
  if (type == "Prepend") {
    XT_ASSIGN_OR_RETURN(std::string prefix, RequiredField<std::string>(j, "prepend", where));
    return std::unique_ptr<Normalizer>(new PrependNormalizer(std::move(prefix)));
  }
  if (type == "Sequence") {
    auto it = j.find("normalizers");
    if (it == j.end() || !it->is_array()) return Status::Error(where + ": missing \"normalizers\"");
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (const auto& sub : *it) {
      XT_ASSIGN_OR_RETURN(auto p, ParseNormalizer(sub));
      if (p) parts.push_back(std::move(p));
    }
    return std::unique_ptr<Normalizer>(new SequenceNormalizer(std::move(parts)));
  }
  return NotImplemented("normalizer", j, kSupportedNormalizers);
}

}  // namespace xt::tok
