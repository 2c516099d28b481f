#!/usr/bin/env python3
"""Differential fuzzing of the engine's tokenizer against Hugging Face `tokenizers`.

For each tokenizer.json, generates random texts (Unicode from many scripts, emoji sequences,
controls and every kind of white space, digits, the tokenizer's own added tokens and pieces of
them, vocabulary pieces), encodes them with HF and with `xtuner tokenizer encode` (with and
without --add-special-tokens), decodes HF's ids and random id sequences with both (with and
without --skip-special-tokens), and reports every difference.

    /tmp/venv-tok/bin/python tools/tokenizer/diff_fuzz.py --xtuner build/xtuner --count 3000
    # default: every tests/data/tokenizers/*/tokenizer.json; or name files / directories

Exit status 1 when anything differs. Deterministic for a given --seed.
"""
import argparse
import glob
import json
import os
import random
import subprocess
import sys

from tokenizers import Tokenizer

# (first, last) code point ranges, by script or kind.
RANGES = [
    (0x20, 0x7E), (0x20, 0x7E), (0x20, 0x7E),  # ASCII, weighted
    (0x00, 0x1F), (0x7F, 0x9F),                 # controls, C1 (NEL U+0085)
    (0xA0, 0xFF), (0x100, 0x24F),               # Latin-1, Latin Extended
    (0x300, 0x36F),                             # combining diacritics
    (0x370, 0x3FF), (0x400, 0x4FF),             # Greek, Cyrillic
    (0x590, 0x5FF), (0x600, 0x6FF),             # Hebrew, Arabic (with marks, digits)
    (0x900, 0x97F), (0xE00, 0xE7F),             # Devanagari, Thai
    (0x1100, 0x11FF), (0xAC00, 0xD7A3),         # Hangul jamo, syllables
    (0x3040, 0x30FF), (0x4E00, 0x9FFF),         # kana, CJK
    (0x3000, 0x303F), (0xFF00, 0xFFEF),         # CJK punctuation, fullwidth forms
    (0x2000, 0x206F),                           # general punctuation, spaces, format chars
    (0x2070, 0x209F), (0x2150, 0x218F),         # super/subscripts, number forms (Nl)
    (0x2460, 0x24FF), (0xFB00, 0xFB4F),         # enclosed alphanumerics, ligatures
    (0x1F300, 0x1FAFF), (0x1F1E6, 0x1F1FF),     # emoji, regional indicators
    (0x1D400, 0x1D7FF), (0x10000, 0x1007F),     # math alphanumerics, Linear B
    (0xE000, 0xE0FF), (0xFE00, 0xFE0F),         # private use, variation selectors
    (0x105C0, 0x105FF), (0x10D40, 0x10D8F),     # scripts of Unicode 16 (Todhri, Garay)
    (0x2EBF0, 0x2EE5F), (0x1C80, 0x1C8F),       # CJK extension I, Cyrillic extended C
    (0x0, 0x10FFFF),                            # anything, assigned or not
]
WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\r", "\x0b", "\x0c", "\x85", "\xa0", "\u1680",
              "\u2000", "\u2009", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000",
              " " * 17, "\n\n\n", " \n ", "\t \t"]
WORDS = ["the", "The", "hello", "world", "don't", "I'm", "you'LL", "it's", "'s", "'ve", "x=1;",
         "foo", "food", "<x>", "tokenization", "▁", "▁▁", "<0x41>", "<0xZZ>", "1234567", "3.14",
         "1,000", "-", ",", "...", "!?", "(a)", "日本語", "中文", "한국어", "مرحبا", "שלום",
         "👩\u200d👩\u200d👧", "👍🏽", "🇫🇷", "e\u0301", "ﬁ", "①", "Ⅻ", "²", "１２", "İ", "ß",
         "ǅ", "ſ"]


def random_char(rng):
    lo, hi = rng.choice(RANGES)
    while True:
        cp = rng.randint(lo, hi)
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


def random_text(rng, specials, vocab_pieces):
    parts = []
    for _ in range(rng.randint(0, 12)):
        r = rng.random()
        if r < 0.25:
            parts.append("".join(random_char(rng) for _ in range(rng.randint(1, 8))))
        elif r < 0.4:
            parts.append(rng.choice(WHITESPACE))
        elif r < 0.6:
            parts.append(rng.choice(WORDS))
        elif r < 0.75 and specials:
            s = rng.choice(specials)
            if rng.random() < 0.2:  # a fragment of a special token
                a = rng.randint(0, len(s))
                s = s[a:rng.randint(a, len(s))]
            parts.append(s)
        elif r < 0.9 and vocab_pieces:
            parts.append(rng.choice(vocab_pieces))
        else:
            parts.append(str(rng.randint(0, 10 ** rng.randint(1, 12))))
    sep = rng.choice(["", " ", ""])
    return sep.join(parts)


def run_cli(xtuner, args, lines):
    p = subprocess.run([xtuner, "tokenizer"] + args, input="\n".join(lines) + "\n",
                       capture_output=True, text=True, encoding="utf-8")
    if p.returncode != 0:
        raise RuntimeError(f"xtuner {' '.join(args)} failed: {p.stderr.strip()}")
    out = p.stdout.split("\n")
    if out and out[-1] == "":
        out.pop()
    return [json.loads(x) for x in out]


def vocab_pieces(tok, rng, n=400):
    """Decoded vocabulary entries: text that exercises long merges."""
    size = tok.get_vocab_size(with_added_tokens=False)
    out = []
    for _ in range(n):
        t = tok.decode([rng.randrange(size)], skip_special_tokens=True)
        if t and "\ufffd" not in t:
            out.append(t)
    return out


def fuzz_one(path, xtuner, count, seed, show):
    tok = Tokenizer.from_file(path)
    rng = random.Random(seed)
    j = json.load(open(path, encoding="utf-8"))
    specials = [t["content"] for t in j.get("added_tokens", [])]
    pieces = vocab_pieces(tok, rng)
    texts = [random_text(rng, specials, pieces) for _ in range(count)]
    for k in range(0, count, 20):  # some long texts: long words, long runs
        texts[k] = "".join(random_text(rng, specials, pieces) for _ in range(30))
        if k % 40 == 0:
            texts[k] += rng.choice([" ", "\n", "7", "a", "日"]) * rng.randint(50, 300)
    mismatches = []

    def report(kind, inp, want, got):
        mismatches.append((kind, inp, want, got))
        if len(mismatches) <= show:
            print(f"  MISMATCH {kind}: input={inp!r}\n    hf    ={want!r}\n    engine={got!r}")

    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in texts]
    for add in (False, True):
        args = ["encode", "--tokenizer", path] + (["--add-special-tokens"] if add else [])
        got = run_cli(xtuner, args, lines)
        for t, g in zip(texts, got):
            want = tok.encode(t, add_special_tokens=add).ids
            if g["ids"] != want:
                report("encode" + (" +special" if add else ""), t, want, g["ids"])

    # Decode HF's ids and random sequences of ids (bytes that are not UTF-8, lone pieces).
    valid = [i for i in range(tok.get_vocab_size(with_added_tokens=True))
             if tok.id_to_token(i) is not None]
    id_lists = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    id_lists += [[rng.choice(valid) for _ in range(rng.randint(0, 12))] for _ in range(count)]
    lines = [json.dumps({"ids": ids}) for ids in id_lists]
    for skip in (False, True):
        args = ["decode", "--tokenizer", path] + (["--skip-special-tokens"] if skip else [])
        got = run_cli(xtuner, args, lines)
        for ids, g in zip(id_lists, got):
            want = tok.decode(ids, skip_special_tokens=skip)
            if g["text"] != want:
                report("decode" + (" skip" if skip else ""), ids, want, g["text"])
    return 2 * len(texts), 2 * len(id_lists), len(mismatches)


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="*", help="tokenizer.json files or directories")
    ap.add_argument("--xtuner", default=os.path.join(root, "build", "xtuner"))
    ap.add_argument("--count", type=int, default=3000, help="texts per tokenizer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=5, help="mismatches to print per tokenizer")
    a = ap.parse_args()
    paths = a.paths or sorted(glob.glob(os.path.join(root, "tests/data/tokenizers/*/tokenizer.json")))
    paths = [os.path.join(p, "tokenizer.json") if os.path.isdir(p) else p for p in paths]
    total_bad = 0
    print(f"{'tokenizer':<28} {'encodes':>8} {'decodes':>8} {'mismatches':>10}")
    for i, p in enumerate(paths):
        name = os.path.basename(os.path.dirname(p))
        enc, dec, bad = fuzz_one(p, a.xtuner, a.count, a.seed + i, a.show)
        total_bad += bad
        print(f"{name:<28} {enc:>8} {dec:>8} {bad:>10}", flush=True)
    sys.exit(1 if total_bad else 0)


if __name__ == "__main__":
    main()
