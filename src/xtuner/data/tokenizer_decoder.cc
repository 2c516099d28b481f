#include "xtuner/data/tokenizer_decoder.h"

#include <nlohmann/json.hpp>

#include "xtuner/data/tokenizer_json.h"
#include "xtuner/data/tokenizer_regex.h"
#include "xtuner/data/tokenizer_unicode.h"

namespace xt::tok {

namespace {

constexpr const char* kSupportedDecoders =
    "ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, BPEDecoder, Sequence";

using Tokens = std::vector<std::string>;

// Tokens written in GPT-2's byte alphabet back to bytes (a token with another character is
// taken as is), then the bytes as UTF-8 with U+FFFD for what is invalid: one token.
class ByteLevelDecoder : public Decoder {
 public:
  void DecodeChain(Tokens* tokens) const override {
    std::string bytes;
    for (const std::string& t : *tokens) {
      const size_t mark = bytes.size();
      bool ok = true;
      for (size_t i = 0; i < t.size() && ok;) {
        uint32_t cp;
        i += DecodeUtf8(t.data() + i, &cp);
        const int b = CharToByte(cp);
        ok = b >= 0;
        bytes += static_cast<char>(b);
      }
      if (!ok) {
        bytes.resize(mark);
        bytes += t;
      }
    }
    std::string text;
    AppendUtf8Lossy(bytes, &text);
    tokens->assign(1, std::move(text));
  }
};

// The replacement character becomes a space, except in the first token when a prefix space
// was added at encoding time (prepend_scheme other than "never").
class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(uint32_t rep, bool strip_first) : strip_first_(strip_first) {
    AppendUtf8(rep, &rep_);
  }
  void DecodeChain(Tokens* tokens) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& t = (*tokens)[i];
      std::string out;
      for (size_t k = 0; k < t.size();) {
        if (t.compare(k, rep_.size(), rep_) == 0) {
          if (i != 0 || !strip_first_) out += ' ';
          k += rep_.size();
        } else {
          out += t[k++];
        }
      }
      t.swap(out);
    }
  }

 private:
  std::string rep_;
  bool strip_first_;
};

// Runs of <0xHH> tokens become the text of their bytes, or one U+FFFD per byte when the run is
// not valid UTF-8.
class ByteFallbackDecoder : public Decoder {
 public:
  void DecodeChain(Tokens* tokens) const override {
    Tokens out;
    std::string run;
    size_t run_len = 0;
    auto flush = [&] {
      if (run_len == 0) return;
      if (IsValidUtf8(run)) {
        out.push_back(run);
      } else {
        for (size_t i = 0; i < run_len; ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      run.clear();
      run_len = 0;
    };
    for (std::string& t : *tokens) {
      int byte = -1;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') byte = ParseHexByte(t, 3);
      if (byte >= 0) {
        run += static_cast<char>(byte);
        ++run_len;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens->swap(out);
  }

 private:
  // Rust's u8::from_str_radix(&t[i..i+2], 16): an optional '+' then hex digits.
  static int ParseHexByte(const std::string& t, size_t i) {
    auto hex = [](char c) {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    if (t[i] == '+') return hex(t[i + 1]);
    const int hi = hex(t[i]), lo = hex(t[i + 1]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }
};

class FuseDecoder : public Decoder {
 public:
  void DecodeChain(Tokens* tokens) const override {
    std::string all;
    for (const std::string& t : *tokens) all += t;
    tokens->assign(1, std::move(all));
  }
};

// Removes up to `start` leading and `stop` trailing copies of a character from each token.
class StripDecoder : public Decoder {
 public:
  StripDecoder(uint32_t c, size_t start, size_t stop) : c_(c), start_(start), stop_(stop) {}
  void DecodeChain(Tokens* tokens) const override {
    for (std::string& t : *tokens) {
      std::vector<uint32_t> chars;
      std::vector<size_t> offsets;
      for (size_t i = 0; i < t.size();) {
        uint32_t cp;
        offsets.push_back(i);
        i += DecodeUtf8(t.data() + i, &cp);
        chars.push_back(cp);
      }
      offsets.push_back(t.size());
      size_t a = 0, b = chars.size();
      for (size_t i = 0; i < start_ && i < chars.size() && chars[i] == c_; ++i) a = i + 1;
      for (size_t i = 0; i < stop_ && i < chars.size() && chars[chars.size() - 1 - i] == c_; ++i) {
        b = chars.size() - 1 - i;
      }
      // HF panics when the cuts cross (a token made only of the character); keep nothing.
      t = b > a ? t.substr(offsets[a], offsets[b] - offsets[a]) : std::string();
    }
  }

 private:
  uint32_t c_;
  size_t start_, stop_;
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(Regex re, std::string content)
      : re_(std::move(re)), content_(std::move(content)) {}
  void DecodeChain(Tokens* tokens) const override {
    std::vector<Span> spans;
    for (std::string& t : *tokens) {
      spans.clear();
      re_.FindMatches(t, &spans);
      std::string out;
      for (const Span& s : spans) {
        if (s.match) {
          out += content_;
        } else {
          out.append(t, s.start, s.end - s.start);
        }
      }
      t.swap(out);
    }
  }

 private:
  Regex re_;
  std::string content_;
};

// The end-of-word suffix becomes a space (nothing in the last token).
class BpeDecoder : public Decoder {
 public:
  explicit BpeDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  void DecodeChain(Tokens* tokens) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& t = (*tokens)[i];
      const char* rep = i + 1 == tokens->size() ? "" : " ";
      if (suffix_.empty()) continue;
      std::string out;
      size_t k = 0;
      for (size_t f; (f = t.find(suffix_, k)) != std::string::npos; k = f + suffix_.size()) {
        out.append(t, k, f - k);
        out += rep;
      }
      out.append(t, k, std::string::npos);
      t.swap(out);
    }
  }

 private:
  std::string suffix_;
};

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts)
      : parts_(std::move(parts)) {}
  void DecodeChain(Tokens* tokens) const override {
    for (const auto& p : parts_) p->DecodeChain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

}  // namespace

Result<std::unique_ptr<Decoder>> ParseDecoder(const nlohmann::json& j) {
  using Ptr = std::unique_ptr<Decoder>;
  if (j.is_null()) return Ptr();
  if (!j.is_object()) return NotImplemented("decoder", j, kSupportedDecoders);
  const std::string type = TypeOf(j);
  const std::string where = "decoder " + type;
  if (type == "ByteLevel") return Ptr(new ByteLevelDecoder());
  if (type == "ByteFallback") return Ptr(new ByteFallbackDecoder());
  if (type == "Fuse") return Ptr(new FuseDecoder());
  if (type == "Metaspace") {
    XT_ASSIGN_OR_RETURN(uint32_t rep, CharField(j, "replacement", where));
    XT_ASSIGN_OR_RETURN(std::string scheme,
                        Field<std::string>(j, "prepend_scheme", where, "always"));
    XT_ASSIGN_OR_RETURN(bool add_prefix_space, Field<bool>(j, "add_prefix_space", where, true));
    if (scheme != "always" && scheme != "never" && scheme != "first") {
      return Status::Error(where + ": unknown prepend_scheme \"" + scheme + "\"");
    }
    return Ptr(new MetaspaceDecoder(rep, add_prefix_space && scheme != "never"));
  }
  if (type == "Strip") {
    XT_ASSIGN_OR_RETURN(uint32_t c, CharField(j, "content", where));
    XT_ASSIGN_OR_RETURN(int64_t start, Field<int64_t>(j, "start", where, 0));
    XT_ASSIGN_OR_RETURN(int64_t stop, Field<int64_t>(j, "stop", where, 0));
    if (start < 0 || stop < 0) return Status::Error(where + ": start and stop must be >= 0");
    return Ptr(new StripDecoder(c, static_cast<size_t>(start), static_cast<size_t>(stop)));
  }
  if (type == "Replace") {
    XT_ASSIGN_OR_RETURN(Regex re, PatternField(j, where));
    XT_ASSIGN_OR_RETURN(std::string content, RequiredField<std::string>(j, "content", where));
    return Ptr(new ReplaceDecoder(std::move(re), std::move(content)));
  }
  if (type == "BPEDecoder") {
    XT_ASSIGN_OR_RETURN(std::string suffix, Field<std::string>(j, "suffix", where, "</w>"));
    return Ptr(new BpeDecoder(std::move(suffix)));
  }
  if (type == "Sequence") {
    auto it = j.find("decoders");
    if (it == j.end() || !it->is_array()) return Status::Error(where + ": missing \"decoders\"");
    std::vector<Ptr> parts;
    for (const auto& sub : *it) {
      XT_ASSIGN_OR_RETURN(Ptr p, ParseDecoder(sub));
      if (p) parts.push_back(std::move(p));
    }
    return Ptr(new SequenceDecoder(std::move(parts)));
  }
  return NotImplemented("decoder", j, kSupportedDecoders);
}

}  // namespace xt::tok
