#include "xtuner/data/tokenizer_unicode.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstring>

#include "xtuner/data/tokenizer_unicode_tables.h"

namespace xt::tok {

namespace {

// Number of continuation bytes after `lead` and the allowed range of the first one (the
// Unicode table of well-formed sequences); 0 continuation bytes for a byte that cannot lead.
struct LeadInfo {
  int n;
  unsigned char lo, hi;
};

LeadInfo Lead(unsigned char b) {
  if (b >= 0xC2 && b <= 0xDF) return {1, 0x80, 0xBF};
  if (b == 0xE0) return {2, 0xA0, 0xBF};
  if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) return {2, 0x80, 0xBF};
  if (b == 0xED) return {2, 0x80, 0x9F};
  if (b == 0xF0) return {3, 0x90, 0xBF};
  if (b >= 0xF1 && b <= 0xF3) return {3, 0x80, 0xBF};
  if (b == 0xF4) return {3, 0x80, 0x8F};
  return {0, 0, 0};
}

// Length of the valid sequence at s[i], or -(length of the maximal invalid subpart).
int CheckSequence(const unsigned char* s, size_t n, size_t i) {
  const unsigned char b = s[i];
  if (b < 0x80) return 1;
  LeadInfo L = Lead(b);
  if (L.n == 0) return -1;
  size_t j = i + 1;
  for (int k = 0; k < L.n; ++k, ++j) {
    const unsigned char lo = k == 0 ? L.lo : 0x80, hi = k == 0 ? L.hi : 0xBF;
    if (j >= n || s[j] < lo || s[j] > hi) return -static_cast<int>(j - i);
  }
  return L.n + 1;
}

struct ByteTables {
  std::array<uint32_t, 256> to_char{};
  std::array<std::string, 256> to_char_utf8;
  std::array<int16_t, 256 + 68> to_byte;  // indexed by code point
  ByteTables() {
    to_byte.fill(-1);
    bool direct[256] = {};
    for (int b = '!'; b <= '~'; ++b) direct[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      to_char[b] = direct[b] ? b : 256 + n++;
      to_byte[to_char[b]] = static_cast<int16_t>(b);
      AppendUtf8(to_char[b], &to_char_utf8[b]);
    }
  }
};

const ByteTables& Tables() {
  static const ByteTables t;
  return t;
}

}  // namespace

bool IsValidUtf8(std::string_view s, size_t* bad_offset) {
  const auto* u = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // Eight ASCII bytes at a time.
    if (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, u + i, 8);
      if ((w & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    const int len = CheckSequence(u, n, i);
    if (len < 0) {
      if (bad_offset) *bad_offset = i;
      return false;
    }
    i += len;
  }
  return true;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  char b[4];
  int n;
  if (cp < 0x80) {
    b[0] = static_cast<char>(cp);
    n = 1;
  } else if (cp < 0x800) {
    b[0] = static_cast<char>(0xC0 | (cp >> 6));
    b[1] = static_cast<char>(0x80 | (cp & 0x3F));
    n = 2;
  } else if (cp < 0x10000) {
    b[0] = static_cast<char>(0xE0 | (cp >> 12));
    b[1] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    b[2] = static_cast<char>(0x80 | (cp & 0x3F));
    n = 3;
  } else {
    b[0] = static_cast<char>(0xF0 | (cp >> 18));
    b[1] = static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    b[2] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    b[3] = static_cast<char>(0x80 | (cp & 0x3F));
    n = 4;
  }
  out->append(b, n);
}

uint32_t FirstChar(std::string_view s) {
  uint32_t cp;
  DecodeUtf8(s.data(), &cp);
  return cp;
}

uint32_t LastChar(std::string_view s) {
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return FirstChar(s.substr(i));
}

bool IsWhiteSpace(uint32_t cp) {
  if (cp < 0x80) return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20;
  return InRanges(kWhiteSpace, kWhiteSpaceSize, cp);
}

bool IsNumeric(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return InRanges(kNumeric, kNumericSize, cp);
}

bool IsWordChar(uint32_t cp) {
  if (cp < 0x80) {
    return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9') ||
           cp == '_';
  }
  return InRanges(kWordChar, kWordCharSize, cp);
}

bool IsPunctuation(uint32_t cp) { return InRanges(kPunctuation, kPunctuationSize, cp); }

void AppendLowercase(uint32_t cp, std::string* out) {
  const LowercaseException* e =
      std::lower_bound(kLowercaseExceptions, kLowercaseExceptions + kLowercaseExceptionsSize, cp,
                       [](const LowercaseException& x, uint32_t c) { return x.cp < c; });
  if (e != kLowercaseExceptions + kLowercaseExceptionsSize && e->cp == cp) {
    out->append(e->lower);
    return;
  }
  AppendUtf8(static_cast<uint32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp))), out);
}

bool IsNormalizationInert(uint32_t cp) {
  return cp >= 0x300 && InRanges(kNormalizationInert, kNormalizationInertSize, cp);
}

void AppendUtf8Lossy(std::string_view bytes, std::string* out) {
  const auto* u = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0, run = 0;  // [run, i) is valid and not yet appended
  while (i < n) {
    const int len = CheckSequence(u, n, i);
    if (len > 0) {
      i += len;
      continue;
    }
    out->append(bytes.data() + run, i - run);
    out->append("\xEF\xBF\xBD");
    i += -len;
    run = i;
  }
  out->append(bytes.data() + run, n - run);
}

const std::array<uint32_t, 256>& ByteToChar() { return Tables().to_char; }
const std::array<std::string, 256>& ByteToCharUtf8() { return Tables().to_char_utf8; }

int CharToByte(uint32_t cp) { return cp < 256 + 68 ? Tables().to_byte[cp] : -1; }

}  // namespace xt::tok
