#include "xtuner/data/tokenizer_pretokenizer.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "xtuner/data/tokenizer_json.h"
#include "xtuner/data/tokenizer_unicode.h"

namespace xt::tok {

namespace {

constexpr const char* kSupportedPreTokenizers =
    "Split, ByteLevel, Digits, Metaspace, Whitespace, WhitespaceSplit, Punctuation, "
    "BertPreTokenizer, Sequence";

// GPT-2's pattern, which ByteLevel uses when use_regex is true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// HF's find_matches for a `Fn(char) -> bool` pattern: every character that satisfies `pred` is
// a match of its own.
template <class Pred>
void CharSpans(std::string_view s, Pred pred, std::vector<Span>* out) {
  if (s.empty()) {
    out->push_back({0, 0, false});
    return;
  }
  size_t last = 0;
  for (size_t b = 0; b < s.size();) {
    uint32_t cp;
    const int len = DecodeUtf8(s.data() + b, &cp);
    if (pred(cp)) {
      if (last < b) out->push_back({last, b, false});
      out->push_back({b, b + len, true});
      last = b + len;
    }
    b += len;
  }
  if (s.size() > last) out->push_back({last, s.size(), false});
}

// Emits the non-empty ranges of `s`; a range keeps at_origin only if it starts at 0.
void EmitRanges(std::string_view s, bool at_origin,
                const std::vector<std::pair<size_t, size_t>>& ranges, PieceSink emit) {
  for (const auto& [a, b] : ranges) {
    if (b > a) emit(s.substr(a, b - a), at_origin && a == 0);
  }
}

Result<SplitBehavior> ParseBehavior(const nlohmann::json& j, const std::string& where) {
  XT_ASSIGN_OR_RETURN(std::string b, Field<std::string>(j, "behavior", where, "Isolated"));
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  return Status::Error(where + ": unknown behavior \"" + b + "\"");
}

}  // namespace

class Stage {
 public:
  virtual ~Stage() = default;
  // Splits or rewrites `s` and emits the resulting pieces in order.
  virtual void Apply(std::string_view s, bool at_origin, PreTokenizerScratch::PerStage* sc,
                     PieceSink emit) const = 0;
};

namespace {

class SplitStage : public Stage {
 public:
  SplitStage(Regex re, SplitBehavior b, bool invert) : re_(std::move(re)), b_(b), invert_(invert) {}
  void Apply(std::string_view s, bool at_origin, PreTokenizerScratch::PerStage* sc,
             PieceSink emit) const override {
    sc->spans.clear();
    re_.FindMatches(s, &sc->spans);
    if (invert_) {
      for (Span& sp : sc->spans) sp.match = !sp.match;
    }
    ApplySplitBehavior(sc->spans, b_, &sc->ranges);
    EmitRanges(s, at_origin, sc->ranges, emit);
  }

 private:
  Regex re_;
  SplitBehavior b_;
  bool invert_;
};

// Splits where a character satisfies a predicate (Digits, WhitespaceSplit, Punctuation).
template <class Pred>
class CharSplitStage : public Stage {
 public:
  CharSplitStage(Pred pred, SplitBehavior b) : pred_(pred), b_(b) {}
  void Apply(std::string_view s, bool at_origin, PreTokenizerScratch::PerStage* sc,
             PieceSink emit) const override {
    sc->spans.clear();
    CharSpans(s, pred_, &sc->spans);
    ApplySplitBehavior(sc->spans, b_, &sc->ranges);
    EmitRanges(s, at_origin, sc->ranges, emit);
  }

 private:
  Pred pred_;
  SplitBehavior b_;
};

template <class Pred>
std::unique_ptr<Stage> MakeCharSplit(Pred pred, SplitBehavior b) {
  return std::make_unique<CharSplitStage<Pred>>(pred, b);
}

// HF's Whitespace: the matches of Rust regex `\w+|[^\w\s]+`, i.e. maximal runs of word
// characters and of other non-space characters; white space is dropped.
class WhitespaceStage : public Stage {
 public:
  void Apply(std::string_view s, bool at_origin, PreTokenizerScratch::PerStage* sc,
             PieceSink emit) const override {
    int run_kind = 0;  // 0: white space, 1: word, 2: other
    size_t run_start = 0;
    for (size_t i = 0; i <= s.size();) {
      int kind = 0;
      int len = 1;
      if (i < s.size()) {
        uint32_t cp;
        len = DecodeUtf8(s.data() + i, &cp);
        kind = IsWordChar(cp) ? 1 : IsWhiteSpace(cp) ? 0 : 2;
      }
      if (kind != run_kind || i == s.size()) {
        if (run_kind != 0 && i > run_start) {
          emit(s.substr(run_start, i - run_start), at_origin && run_start == 0);
        }
        run_kind = kind;
        run_start = i;
      }
      i += len;
    }
  }
};

class ByteLevelStage : public Stage {
 public:
  ByteLevelStage(bool add_prefix_space, const Regex* re)
      : add_prefix_space_(add_prefix_space), re_(re) {}
  // Ends the chain: emit raw bytes, which the model maps to the alphabet itself.
  void set_last() { last_ = true; }
  void Apply(std::string_view s, bool at_origin, PreTokenizerScratch::PerStage* sc,
             PieceSink emit) const override {
    if (add_prefix_space_ && s.front() != ' ') {
      sc->buf.assign(1, ' ');
      sc->buf.append(s);
      s = sc->buf;
    }
    if (re_ == nullptr) return Map(s, at_origin, sc, emit);
    sc->spans.clear();
    re_->FindMatches(s, &sc->spans);
    for (const Span& sp : sc->spans) {
      if (sp.end > sp.start)
        Map(s.substr(sp.start, sp.end - sp.start), at_origin && !sp.start, sc, emit);
    }
  }

 private:
  // At the end of the chain the model maps bytes itself; otherwise write the alphabet here.
  void Map(std::string_view s, bool at_origin, PreTokenizerScratch::PerStage* sc,
           PieceSink emit) const {
    if (last_) return emit(s, at_origin);
    const auto& chars = ByteToCharUtf8();
    sc->buf2.clear();
    for (char c : s) sc->buf2 += chars[static_cast<unsigned char>(c)];
    emit(sc->buf2, at_origin);
  }
  bool add_prefix_space_;
  const Regex* re_;
  bool last_ = false;
};

class MetaspaceStage : public Stage {
 public:
  enum Scheme { kAlways, kNever, kFirst };
  MetaspaceStage(uint32_t replacement, Scheme scheme, bool split)
      : rep_cp_(replacement), scheme_(scheme), split_(split) {
    AppendUtf8(replacement, &rep_);
  }
  void Apply(std::string_view s, bool at_origin, PreTokenizerScratch::PerStage* sc,
             PieceSink emit) const override {
    std::string& b = sc->buf;
    b.clear();
    const bool starts_with_rep = s.substr(0, rep_.size()) == rep_ || s.front() == ' ';
    if (!starts_with_rep && (scheme_ == kAlways || (scheme_ == kFirst && at_origin))) b = rep_;
    for (char c : s) {
      if (c == ' ') {
        b += rep_;
      } else {
        b += c;
      }
    }
    if (!split_) return emit(b, at_origin);
    sc->spans.clear();
    const uint32_t rep = rep_cp_;
    CharSpans(
        b, [rep](uint32_t cp) { return cp == rep; }, &sc->spans);
    ApplySplitBehavior(sc->spans, SplitBehavior::kMergedWithNext, &sc->ranges);
    EmitRanges(b, at_origin, sc->ranges, emit);
  }

 private:
  uint32_t rep_cp_;
  std::string rep_;
  Scheme scheme_;
  bool split_;
};

const Regex& Gpt2Regex() {
  static const Regex re = Regex::Compile(kGpt2Pattern, false).value();
  return re;
}

// Appends the stages that `j` describes to `out` (a Sequence is flattened).
Status ParseStages(const nlohmann::json& j, std::vector<std::unique_ptr<Stage>>* out,
                   std::vector<bool>* is_byte_level) {
  if (j.is_null()) return Status::OK();
  if (!j.is_object()) return NotImplemented("pre_tokenizer", j, kSupportedPreTokenizers);
  const std::string type = TypeOf(j);
  const std::string where = "pre_tokenizer " + type;
  auto push = [&](std::unique_ptr<Stage> s, bool byte_level = false) {
    out->push_back(std::move(s));
    is_byte_level->push_back(byte_level);
  };
  if (type == "Sequence") {
    auto it = j.find("pretokenizers");
    if (it == j.end() || !it->is_array()) {
      return Status::Error(where + ": missing \"pretokenizers\"");
    }
    for (const auto& sub : *it) XT_RETURN_IF_ERROR(ParseStages(sub, out, is_byte_level));
  } else if (type == "Split") {
    XT_ASSIGN_OR_RETURN(Regex re, PatternField(j, where));
    XT_ASSIGN_OR_RETURN(SplitBehavior b, ParseBehavior(j, where));
    XT_ASSIGN_OR_RETURN(bool invert, Field<bool>(j, "invert", where, false));
    push(std::make_unique<SplitStage>(std::move(re), b, invert));
  } else if (type == "ByteLevel") {
    XT_ASSIGN_OR_RETURN(bool prefix, Field<bool>(j, "add_prefix_space", where, true));
    XT_ASSIGN_OR_RETURN(bool use_regex, Field<bool>(j, "use_regex", where, true));
    push(std::make_unique<ByteLevelStage>(prefix, use_regex ? &Gpt2Regex() : nullptr), true);
  } else if (type == "Digits") {
    XT_ASSIGN_OR_RETURN(bool individual, Field<bool>(j, "individual_digits", where, false));
    push(MakeCharSplit(IsNumeric,
                       individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous));
  } else if (type == "Metaspace") {
    XT_ASSIGN_OR_RETURN(uint32_t rep, CharField(j, "replacement", where));
    XT_ASSIGN_OR_RETURN(std::string scheme,
                        Field<std::string>(j, "prepend_scheme", where, "always"));
    XT_ASSIGN_OR_RETURN(bool add_prefix_space, Field<bool>(j, "add_prefix_space", where, true));
    XT_ASSIGN_OR_RETURN(bool split, Field<bool>(j, "split", where, true));
    MetaspaceStage::Scheme s;
    if (scheme == "always") {
      s = MetaspaceStage::kAlways;
    } else if (scheme == "never") {
      s = MetaspaceStage::kNever;
    } else if (scheme == "first") {
      s = MetaspaceStage::kFirst;
    } else {
      return Status::Error(where + ": unknown prepend_scheme \"" + scheme + "\"");
    }
    if (!add_prefix_space) s = MetaspaceStage::kNever;
    push(std::make_unique<MetaspaceStage>(rep, s, split));
  } else if (type == "Whitespace") {
    push(std::make_unique<WhitespaceStage>());
  } else if (type == "WhitespaceSplit") {
    push(MakeCharSplit(IsWhiteSpace, SplitBehavior::kRemoved));
  } else if (type == "Punctuation") {
    XT_ASSIGN_OR_RETURN(SplitBehavior b, ParseBehavior(j, where));
    push(MakeCharSplit(IsPunctuation, b));
  } else if (type == "BertPreTokenizer") {
    push(MakeCharSplit(IsWhiteSpace, SplitBehavior::kRemoved));
    push(MakeCharSplit(IsPunctuation, SplitBehavior::kIsolated));
  } else {
    return NotImplemented("pre_tokenizer", j, kSupportedPreTokenizers);
  }
  return Status::OK();
}

}  // namespace

void ApplySplitBehavior(const std::vector<Span>& spans, SplitBehavior behavior,
                        std::vector<std::pair<size_t, size_t>>* ranges) {
  ranges->clear();
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Span& s : spans) {
        if (!s.match) ranges->push_back({s.start, s.end});
      }
      return;
    case SplitBehavior::kIsolated:
      for (const Span& s : spans) ranges->push_back({s.start, s.end});
      return;
    case SplitBehavior::kContiguous:
      for (const Span& s : spans) {
        if (s.match == previous_match && !ranges->empty()) {
          ranges->back().second = s.end;
        } else {
          ranges->push_back({s.start, s.end});
        }
        previous_match = s.match;
      }
      return;
    case SplitBehavior::kMergedWithPrevious:
      for (const Span& s : spans) {
        if (s.match && !previous_match && !ranges->empty()) {
          ranges->back().second = s.end;
        } else {
          ranges->push_back({s.start, s.end});
        }
        previous_match = s.match;
      }
      return;
    case SplitBehavior::kMergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->match && !previous_match && !ranges->empty()) {
          ranges->back().first = it->start;
        } else {
          ranges->push_back({it->start, it->end});
        }
        previous_match = it->match;
      }
      std::reverse(ranges->begin(), ranges->end());
      return;
  }
}

PreTokenizer::PreTokenizer() = default;
PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

Result<PreTokenizer> PreTokenizer::Parse(const nlohmann::json& j) {
  PreTokenizer p;
  std::vector<bool> is_byte_level;
  XT_RETURN_IF_ERROR(ParseStages(j, &p.stages_, &is_byte_level));
  if (!p.stages_.empty() && is_byte_level.back()) {
    static_cast<ByteLevelStage*>(p.stages_.back().get())->set_last();
    p.raw_bytes_ = true;
  }
  return p;
}

void PreTokenizer::Run(std::string_view text, bool at_origin, PreTokenizerScratch* scratch,
                       PieceSink sink) const {
  if (scratch->stages.size() < stages_.size()) scratch->stages.resize(stages_.size());
  RunFrom(0, text, at_origin, scratch, sink);
}

void PreTokenizer::RunFrom(size_t i, std::string_view text, bool at_origin,
                           PreTokenizerScratch* scratch, PieceSink sink) const {
  if (i == stages_.size()) return sink(text, at_origin);
  stages_[i]->Apply(text, at_origin, &scratch->stages[i], [&](std::string_view piece, bool at0) {
    RunFrom(i + 1, piece, at0, scratch, sink);
  });
}

}  // namespace xt::tok
