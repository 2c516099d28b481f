#!/usr/bin/env python3
"""Writes the seed corpus of dataset_fuzz (standard library only): each corpus file of
tests/data/corpus under each of the fuzzer's five tokenizer/template settings (the first byte),
with the dataset kind auto, and each file with a "messages" key once more with
train.last_turn_only; and the harmony samples of tests/data/tokenizers/chat_templates/
expected.json, one JSONL file under the harmony setting.

Usage: python3 fuzz/make_dataset_corpus.py fuzz/corpus/dataset
"""
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "corpus")
EXPECTED = os.path.join(ROOT, "..", "tokenizers", "chat_templates", "expected.json")
# The settings of dataset_fuzz.cc: name -> first byte (bit 5: harmony).
SETTINGS = {"qwen3": 0, "chatml": 1, "llama3": 2, "deepseek": 3, "harmony": 0x20}


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name in sorted(os.listdir(ROOT)):
        if not name.endswith(".jsonl"):
            continue
        data = open(os.path.join(ROOT, name), "rb").read()
        stem = name[: -len(".jsonl")]
        for setting, i in SETTINGS.items():
            modes = [i]
            if b'"messages"' in data:
                modes.append(i | 0x10)  # last turn only
            for mode in modes:
                suffix = "_last" if mode & 0x10 else ""
                with open(os.path.join(out, f"{stem}_{setting}{suffix}"), "wb") as f:
                    f.write(bytes([mode]) + data)
    expected = json.load(open(EXPECTED, encoding="utf-8"))
    lines = [json.dumps(r["sample"], ensure_ascii=False) for r in expected["renders"]
             if r["template"] == "harmony"]
    with open(os.path.join(out, "expected_harmony"), "wb") as f:
        f.write(bytes([SETTINGS["harmony"]]) + ("\n".join(lines) + "\n").encode("utf-8"))


if __name__ == "__main__":
    main()
