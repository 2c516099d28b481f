// Regex: the patterns of tokenizer.json (Split, Replace), run through PCRE2 with JIT in UTF + UCP
// mode, behaving as the Oniguruma regexes HF `tokenizers` compiles them into:
//   - \s also matches U+0085 and \w is Unicode's word class, as in Oniguruma (PCRE2 differs);
//     \h is a hex digit. Inside a character class \S, \W and \H keep PCRE2's meaning.
//   - ^ and $ are line anchors (Oniguruma's default syntax).
//   - FindIter visits matches as the `onig` crate's find_iter: an empty match right where the
//     previous match ended is skipped by one character.
// Immutable after Compile; all methods are thread-safe (match state is per thread).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "xtuner/core/status.h"

namespace xt::tok {

// A span of the searched string and whether it is a match (HF's `(Offsets, bool)`).
struct Span {
  size_t start, end;
  bool match;
};

class Regex {
 public:
  // `pattern` is a regex (Oniguruma syntax) or, when `literal`, a string matched as is.
  static Result<Regex> Compile(std::string_view pattern, bool literal);

  // Appends to `out` the matches in `s` (valid UTF-8) and the gaps between them, covering `s`
  // in order: HF's `Pattern::find_matches`. An empty `s` gives one empty non-match.
  void FindMatches(std::string_view s, std::vector<Span>* out) const;

  const std::string& pattern() const { return pattern_; }

  struct Code;

 private:
  std::shared_ptr<const Code> code_;
  std::string pattern_;
};

// The PCRE2 spelling of an Oniguruma pattern (exposed for tests).
std::string TranslateOnigPattern(std::string_view pattern);

}  // namespace xt::tok
