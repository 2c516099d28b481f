#include "xtuner/data/tokenizer_added.h"

#include <algorithm>
#include <cstring>

#include "xtuner/data/tokenizer_unicode.h"

namespace xt::tok {

namespace {

// Start of the run of white space that ends `s` (Rust regex `\s*$`).
size_t SpaceLeftmostAtEnd(std::string_view s) {
  size_t i = s.size();
  while (i > 0) {
    size_t j = i - 1;
    while (j > 0 && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) --j;
    uint32_t cp;
    DecodeUtf8(s.data() + j, &cp);
    if (!IsWhiteSpace(cp)) break;
    i = j;
  }
  return i;
}

// Length of the run of white space that starts `s` (Rust regex `^\s*`).
size_t SpaceRightmostAtStart(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    uint32_t cp;
    const int n = DecodeUtf8(s.data() + i, &cp);
    if (!IsWhiteSpace(cp)) break;
    i += n;
  }
  return i;
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher() {
  nodes_.emplace_back();
  root_child_.fill(-1);
}

void AddedTokenMatcher::Add(std::string_view pattern, int32_t id, const AddedToken* flags) {
  if (pattern.empty()) return;
  const auto first = static_cast<unsigned char>(pattern[0]);
  if (root_child_[first] < 0) {
    root_child_[first] = static_cast<int32_t>(nodes_.size());
    nodes_.emplace_back();
    nodes_.back().byte = first;
    ++distinct_first_bytes_;
    only_first_byte_ = first;
  }
  int32_t node = root_child_[first];
  for (size_t k = 1; k < pattern.size(); ++k) {
    const auto b = static_cast<unsigned char>(pattern[k]);
    int32_t c = nodes_[node].first_child;
    while (c >= 0 && nodes_[c].byte != b) c = nodes_[c].next_sibling;
    if (c < 0) {
      c = static_cast<int32_t>(nodes_.size());
      nodes_.emplace_back();
      nodes_.back().byte = b;
      nodes_.back().next_sibling = nodes_[node].first_child;
      nodes_[node].first_child = c;
    }
    node = c;
  }
  // The same pattern added twice: the first one wins (an automaton reports the lowest index).
  if (nodes_[node].pattern < 0) {
    nodes_[node].pattern = static_cast<int32_t>(patterns_.size());
  }
  patterns_.push_back({id, flags});
}

int AddedTokenMatcher::LongestAt(std::string_view s, size_t i, size_t* end) const {
  int32_t node = root_child_[static_cast<unsigned char>(s[i])];
  int best = -1;
  for (size_t k = i + 1;; ++k) {
    if (nodes_[node].pattern >= 0) {
      best = nodes_[node].pattern;
      *end = k;
    }
    if (k == s.size()) break;
    const auto b = static_cast<unsigned char>(s[k]);
    int32_t c = nodes_[node].first_child;
    while (c >= 0 && nodes_[c].byte != b) c = nodes_[c].next_sibling;
    if (c < 0) break;
    node = c;
  }
  return best;
}

void AddedTokenMatcher::Split(std::string_view s, std::vector<Piece>* out) const {
  const size_t n = s.size();
  size_t search = 0, start_offset = 0;
  while (search < n) {
    // Leftmost position where some pattern matches, then its longest match.
    size_t start = search, stop = 0;
    int pat = -1;
    while (start < n) {
      if (distinct_first_bytes_ == 1) {
        const void* p = std::memchr(s.data() + start, only_first_byte_, n - start);
        if (p == nullptr) {
          start = n;
          break;
        }
        start = static_cast<const char*>(p) - s.data();
      } else if (root_child_[static_cast<unsigned char>(s[start])] < 0) {
        ++start;
        continue;
      }
      pat = LongestAt(s, start, &stop);
      if (pat >= 0) break;
      ++start;
    }
    if (pat < 0) break;
    search = stop;
    const AddedToken& t = *patterns_[pat].flags;
    if (t.single_word) {
      const bool start_space = start == 0 || !IsWordChar(LastChar(s.substr(0, start)));
      const bool stop_space = stop == n || !IsWordChar(FirstChar(s.substr(stop)));
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) start = std::max(SpaceLeftmostAtEnd(s.substr(0, start)), start_offset);
    if (t.rstrip) stop += SpaceRightmostAtStart(s.substr(stop));
    if (start_offset < start) out->push_back({start_offset, start, -1});
    out->push_back({start, stop, patterns_[pat].id});
    start_offset = stop;
  }
  if (start_offset < n) out->push_back({start_offset, n, -1});
}

}  // namespace xt::tok
