#!/usr/bin/env python3
"""Writes src/xtuner/data/tokenizer_unicode_tables.cc: the character classes of HF `tokenizers`,
measured on HF itself, so that the engine agrees with it on every code point.

HF's regexes run on Oniguruma, whose Unicode data is newer than PCRE2 10.42's (Unicode 14, the
version of this Python's `unicodedata`), and its Rust predicates come from several crates of
several Unicode versions. For each regex class (\\p{L}, \\s, \\w, ...) the table lists the code
points Oniguruma puts in it beyond what PCRE2 does; for each Rust predicate (is_punctuation,
is_numeric, is_whitespace, regex \\w) the whole set. HF's Unicode normalization is older than
utf8proc's: the code points utf8proc decomposes, composes or reorders and HF leaves alone are
listed, and so are the characters whose lowercase differs (Rust's is newer).

    /tmp/venv-tok/bin/python tools/tokenizer/make_unicode_tables.py \
        | clang-format --assume-filename=x.cc > src/xtuner/data/tokenizer_unicode_tables.cc
"""
import ctypes
import ctypes.util
import json
import sys
import tempfile
import unicodedata

from tokenizers import AddedToken, Tokenizer, pre_tokenizers

assert unicodedata.unidata_version == "14.0.0", "PCRE2 10.42 has Unicode 14: use Python 3.11"

CPS = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
ALPHA = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
PROPS = ["L", "Lu", "Ll", "Lt", "Lm", "Lo", "M", "Mn", "Mc", "Me", "N", "Nd", "Nl", "No",
         "P", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "S", "Sm", "Sc", "Sk", "So",
         "Z", "Zs", "Zl", "Zp", "Cc", "Cf"]


def removed_by(pattern):
    """Code points that HF's Split(pattern, Removed) removes: Oniguruma's set."""
    j = {"version": "1.0", "added_tokens": [], "normalizer": None,
         "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
             {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Removed",
              "invert": False},
             {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
              "use_regex": False}]},
         "post_processor": None, "decoder": None,
         "model": {"type": "BPE", "vocab": ALPHA, "merges": []}}
    tok = Tokenizer.from_str(json.dumps(j))
    encs = tok.encode_batch([chr(c) for c in CPS], add_special_tokens=False)
    return {c for c, e in zip(CPS, encs) if not e.ids}


def pcre2_set(pred):
    return {c for c in CPS if pred(chr(c))}


def cat(c):
    return unicodedata.category(c)


def ranges(s):
    out = []
    for c in sorted(s):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def class_text(s):
    return "".join(("\\\\x{%X}" % a) if a == b else ("\\\\x{%X}-\\\\x{%X}" % (a, b))
                   for a, b in ranges(s))


def split_set(pre):
    """Code points that a pre-tokenizer isolates or removes between two letters."""
    out = set()
    for c in CPS:
        pieces = pre.pre_tokenize_str("a" + chr(c) + "a")
        if len(pieces) != 1:
            out.add(c)
    return out


def word_chars():
    """Rust regex \\w, as single_word sees it: X is not matched after a word character."""
    tok = Tokenizer.from_str(json.dumps({
        "version": "1.0", "added_tokens": [], "normalizer": None, "pre_tokenizer": None,
        "post_processor": None, "decoder": None,
        "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}))
    tok.add_tokens([AddedToken("X", single_word=True, normalized=False)])
    xid = tok.token_to_id("X")
    encs = tok.encode_batch([chr(c) + "X" for c in CPS], add_special_tokens=False)
    return {c for c, e in zip(CPS, encs) if xid not in e.ids}


UTF8PROC = ctypes.CDLL(ctypes.util.find_library("utf8proc"))
UTF8PROC.utf8proc_map.argtypes = [ctypes.c_char_p, ctypes.c_ssize_t,
                                  ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
UTF8PROC.utf8proc_map.restype = ctypes.c_ssize_t
UTF8PROC.utf8proc_tolower.argtypes = [ctypes.c_int32]
UTF8PROC.utf8proc_tolower.restype = ctypes.c_int32
LIBC = ctypes.CDLL(None)
STABLE, COMPAT, COMPOSE, DECOMPOSE = 1 << 1, 1 << 2, 1 << 3, 1 << 4


def utf8proc(s, options):
    b = s.encode("utf-8", "surrogatepass")
    out = ctypes.c_void_p()
    n = UTF8PROC.utf8proc_map(b, len(b), ctypes.byref(out), options | STABLE)
    r = ctypes.string_at(out, n).decode("utf-8")
    LIBC.free(out)
    return r


def normalization_inert():
    """Code points that utf8proc's normalization touches and HF's leaves alone."""
    from tokenizers import normalizers
    hf = {"nfd": normalizers.NFD(), "nfkd": normalizers.NFKD(), "nfc": normalizers.NFC(),
          "nfkc": normalizers.NFKC()}
    opts = {"nfd": DECOMPOSE, "nfkd": DECOMPOSE | COMPAT, "nfc": COMPOSE,
            "nfkc": COMPOSE | COMPAT}
    out = set()
    for c in CPS:
        ch = chr(c)
        # Marks of combining class 1 and 230 on either side reveal this one's class.
        probes = [ch, ch + "\u0334", "\u0301" + ch, ch + "\u0301"]
        if all(utf8proc(p, DECOMPOSE) == p for p in probes) and utf8proc(ch, DECOMPOSE | COMPAT) == ch:
            continue  # utf8proc leaves it alone too
        for form in hf:
            if any(hf[form].normalize_str(p) != utf8proc(p, opts[form]) for p in probes):
                out.add(c)
                break
    return out


def lowercase_exceptions():
    """Code points whose lowercase (HF's Lowercase: Rust's char::to_lowercase) is not utf8proc's
    simple lowercase."""
    from tokenizers import normalizers
    low = normalizers.Lowercase()
    out = {}
    for c in CPS:
        mine = chr(UTF8PROC.utf8proc_tolower(c))
        theirs = low.normalize_str(chr(c))
        if theirs != mine:
            out[c] = theirs
    return out


def main():
    regex_extra = {}
    for p in PROPS:
        onig = removed_by(r"\p{%s}" % p)
        mine = pcre2_set(lambda ch, p=p: cat(ch).startswith(p))
        missing = mine - onig
        if missing:
            print(f"warning: \\p{{{p}}}: PCRE2 has {len(missing)} code points Oniguruma lacks",
                  file=sys.stderr)
        regex_extra[p] = onig - mine
    # The bases the engine writes for \s (none: the whole set is listed), \w and \d.
    specials = {
        "s": (r"\s", lambda ch: False),
        "w": (r"\w", lambda ch: cat(ch)[0] in "LM" or cat(ch) in ("Nd", "Nl", "Pc")),
        "d": (r"\d", lambda ch: cat(ch) == "Nd"),
    }
    for name, (pattern, pred) in specials.items():
        onig = removed_by(pattern)
        mine = pcre2_set(pred)
        if mine - onig:
            print(f"warning: \\{name}: PCRE2 has {len(mine - onig)} code points Oniguruma lacks",
                  file=sys.stderr)
        regex_extra[name] = onig - mine

    punct = split_set(pre_tokenizers.Punctuation(behavior="isolated"))
    numeric = split_set(pre_tokenizers.Digits(individual_digits=True))
    space = split_set(pre_tokenizers.WhitespaceSplit())
    word = word_chars()

    inert = normalization_inert()
    lower = lowercase_exceptions()

    w = sys.stdout.write
    w("// Generated by tools/tokenizer/make_unicode_tables.py from HF `tokenizers` "
      "itself: do not edit.\n")
    w('#include "xtuner/data/tokenizer_unicode_tables.h"\n\nnamespace xt::tok {\n\n')
    w("// Code points Oniguruma (HF's regex engine) puts in a class beyond PCRE2 10.42's "
      "Unicode 14 data.\n")
    w("const OnigExtra kOnigExtra[] = {\n")
    for name, s in regex_extra.items():
        w('    {"%s", "%s"},\n' % (name, class_text(s)))
    w("    {nullptr, nullptr}};\n\n")
    for name, s, what in [("kPunctuation", punct, "Punctuation / BertPreTokenizer"),
                          ("kNumeric", numeric, "char::is_numeric (Digits)"),
                          ("kWhiteSpace", space, "char::is_whitespace"),
                          ("kWordChar", word, "regex \\w (single_word)")]:
        rs = ranges(s)
        w(f"// {what}: {len(s)} code points.\n")
        w(f"const CodeRange {name}[] = {{\n")
        line = "   "
        for a, b in rs:
            item = " {0x%X, 0x%X}," % (a, b)
            if len(line) + len(item) > 98:
                w(line + "\n")
                line = "   "
            line += item
        w(line + "\n};\n")
        w(f"const size_t {name}Size = {len(rs)};\n\n")
    rs = ranges(inert)
    w(f"// Left alone by HF's normalization, unlike utf8proc's: {len(inert)} code points.\n")
    w("const CodeRange kNormalizationInert[] = {\n")
    w("".join("    {0x%X, 0x%X},\n" % (a, b) for a, b in rs))
    w(f"}};\nconst size_t kNormalizationInertSize = {len(rs)};\n\n")
    w(f"// Lowercase (Rust's char::to_lowercase) where it is not utf8proc_tolower.\n")
    w("const LowercaseException kLowercaseExceptions[] = {\n")
    for c, t in sorted(lower.items()):
        w('    {0x%X, "%s"},\n' % (c, "".join("\\x%02X" % b for b in t.encode())))
    w(f"}};\nconst size_t kLowercaseExceptionsSize = {len(lower)};\n\n")
    w("}  // namespace xt::tok\n")


if __name__ == "__main__":
    main()
