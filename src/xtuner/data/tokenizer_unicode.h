// UTF-8 and Unicode character classes for the tokenizer, each defined as the Rust function that
// HF `tokenizers` calls (char::is_whitespace, char::is_numeric, regex's \w, from_utf8_lossy), so
// that the engine splits text exactly where HF does. The sets are measured on HF
// (tokenizer_unicode_tables.h); case mapping comes from utf8proc.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace xt::tok {

// True if `s` is valid UTF-8 (no overlongs, surrogates or code points past U+10FFFF). On failure
// *bad_offset (if given) is the offset of the first byte that is wrong.
bool IsValidUtf8(std::string_view s, size_t* bad_offset = nullptr);

// Length of the UTF-8 sequence that starts with `lead` (1 for a stray byte).
inline int Utf8Len(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xF0) return 4;
  if (lead >= 0xE0) return 3;
  if (lead >= 0xC0) return 2;
  return 1;
}

// Decodes the code point at p (valid UTF-8 with at least one byte); returns its length.
inline int DecodeUtf8(const char* p, uint32_t* cp) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  if (u[0] < 0x80) {
    *cp = u[0];
    return 1;
  }
  if (u[0] < 0xE0) {
    *cp = ((u[0] & 0x1Fu) << 6) | (u[1] & 0x3Fu);
    return 2;
  }
  if (u[0] < 0xF0) {
    *cp = ((u[0] & 0x0Fu) << 12) | ((u[1] & 0x3Fu) << 6) | (u[2] & 0x3Fu);
    return 3;
  }
  *cp = ((u[0] & 0x07u) << 18) | ((u[1] & 0x3Fu) << 12) | ((u[2] & 0x3Fu) << 6) | (u[3] & 0x3Fu);
  return 4;
}

// Appends the UTF-8 encoding of `cp` to `out`.
void AppendUtf8(uint32_t cp, std::string* out);

// The code point that `s` starts / ends with (valid, non-empty UTF-8).
uint32_t FirstChar(std::string_view s);
uint32_t LastChar(std::string_view s);

// Rust's char::is_whitespace: the Unicode White_Space property.
bool IsWhiteSpace(uint32_t cp);
// Rust's char::is_numeric: general categories Nd, Nl, No.
bool IsNumeric(uint32_t cp);
// Rust regex's \w: Alphabetic, Mark, Decimal_Number, Connector_Punctuation, Join_Control.
bool IsWordChar(uint32_t cp);
// HF's is_punctuation (Punctuation, BertPreTokenizer): ASCII punctuation and categories P*,
// from an older Unicode version.
bool IsPunctuation(uint32_t cp);
// Rust's char::to_lowercase, appended to `out` (full mapping: U+0130 gives two chars).
void AppendLowercase(uint32_t cp, std::string* out);
// A code point that HF's Unicode normalization leaves alone although utf8proc does not (its
// data is older): normalization must copy it and treat it as a boundary.
bool IsNormalizationInert(uint32_t cp);

// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes one U+FFFD.
void AppendUtf8Lossy(std::string_view bytes, std::string* out);

// GPT-2's byte-level alphabet: byte b is written as the character ByteToChar()[b];
// CharToByte(cp) is the byte a character stands for, or -1 when it stands for none.
const std::array<uint32_t, 256>& ByteToChar();
int CharToByte(uint32_t cp);
// The UTF-8 encodings of ByteToChar(), one string per byte.
const std::array<std::string, 256>& ByteToCharUtf8();

}  // namespace xt::tok
