#!/usr/bin/env python3
"""Writes the seed corpus of tokenizer_fuzz (standard library only): for each fixture under
tests/data/tokenizers, a shrunken tokenizer.json (first byte 0: the loader) and a few texts
from its cases.json (first byte 1, second byte the fixture's index: Encode).

Usage: python3 fuzz/make_tokenizer_corpus.py fuzz/corpus/tokenizer
"""
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data",
                    "tokenizers")
# The order of Fixtures() in tokenizer_fuzz.cc.
FIXTURES = ["bpe_qwen_style", "bpe_llama3_style", "bpe_metaspace_fallback", "bpe_llama2_legacy",
            "bpe_bytelevel_gpt2", "bpe_split_behaviors", "bpe_metaspace_digits",
            "bpe_subword_affixes", "bpe_whitespace_punct"]


def shrink(j, keep=120):
    """Keeps the tokens with the lowest ids and the merges among them."""
    m = j["model"]
    vocab = {t: i for t, i in m["vocab"].items() if i < keep or t.startswith("<0x")}
    merges = []
    for mg in m["merges"]:
        a, b = mg.split(" ", 1) if isinstance(mg, str) else mg
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(mg)
    m["vocab"], m["merges"] = vocab, merges
    j["added_tokens"] = [t for t in j["added_tokens"] if t["content"] in vocab or t["id"] < keep]
    return j


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for i, name in enumerate(FIXTURES):
        j = json.load(open(os.path.join(ROOT, name, "tokenizer.json"), encoding="utf-8"))
        with open(os.path.join(out, f"load_{name}"), "wb") as f:
            f.write(b"\x00" + json.dumps(shrink(j), ensure_ascii=False).encode())
        cases = json.load(open(os.path.join(ROOT, name, "cases.json"), encoding="utf-8"))
        for k, c in enumerate(cases[::6]):
            with open(os.path.join(out, f"encode_{name}_{k}"), "wb") as f:
                f.write(b"\x01" + bytes([i]) + c["text"].encode())


if __name__ == "__main__":
    main()
