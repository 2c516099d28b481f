// Added tokens of tokenizer.json and how HF `tokenizers` finds them in text (AddedVocabulary):
// leftmost-longest non-overlapping matches (its Aho-Corasick automaton), then
//   single_word: a match next to a word character (regex \w) is dropped, and the text it
//                covered is not searched again (as HF);
//   lstrip / rstrip: the match takes the white space before / after it;
// and the text between matches is left to the normalizer, pre-tokenizer and model.
// Immutable after building; Split is thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace xt::tok {

struct AddedToken {
  std::string content;
  // What HF's id_to_token and decode give for it: the content passed through the normalizer
  // when `normalized`, else the content.
  std::string as_decoded;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher();
  // Adds `pattern` (the token's content, normalized when the token is) found as token `id`, with
  // the options of `flags` (which must outlive the matcher). An empty pattern is ignored.
  void Add(std::string_view pattern, int32_t id, const AddedToken* flags);
  bool empty() const { return patterns_.empty(); }

  // A piece of the text: an added token (id >= 0) or text to tokenize (id == -1).
  struct Piece {
    size_t start, end;
    int32_t id;
  };
  // Splits `s` (valid UTF-8) into pieces covering it in order (HF's find_matches; token pieces
  // may overlap text a previous rstrip took, as in HF). An empty `s` gives no piece.
  void Split(std::string_view s, std::vector<Piece>* out) const;

 private:
  // Longest pattern that starts at s[i]: its index, or -1; *end is where it ends.
  int LongestAt(std::string_view s, size_t i, size_t* end) const;

  struct Node {
    int32_t first_child = -1, next_sibling = -1, pattern = -1;
    unsigned char byte = 0;
  };
  struct Pattern {
    int32_t id;
    const AddedToken* flags;
  };
  std::vector<Node> nodes_;  // nodes_[0] is the root
  std::array<int32_t, 256> root_child_;
  std::vector<Pattern> patterns_;
  int distinct_first_bytes_ = 0;
  unsigned char only_first_byte_ = 0;
};

}  // namespace xt::tok
