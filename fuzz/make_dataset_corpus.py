#!/usr/bin/env python3
"""Writes the seed corpus of dataset_fuzz (standard library only): each corpus file of
tests/data/corpus under each of the fuzzer's four tokenizer/template settings (the first byte),
with the dataset kind auto, and each file with a "messages" key once more with
train.last_turn_only.

Usage: python3 fuzz/make_dataset_corpus.py fuzz/corpus/dataset
"""
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "corpus")
# The order of Settings() in dataset_fuzz.cc.
SETTINGS = ["qwen3", "chatml", "llama3", "deepseek"]


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name in sorted(os.listdir(ROOT)):
        if not name.endswith(".jsonl"):
            continue
        data = open(os.path.join(ROOT, name), "rb").read()
        stem = name[: -len(".jsonl")]
        for i, setting in enumerate(SETTINGS):
            modes = [i]
            if b'"messages"' in data:
                modes.append(i | 0x10)  # last turn only
            for mode in modes:
                suffix = "_last" if mode & 0x10 else ""
                with open(os.path.join(out, f"{stem}_{setting}{suffix}"), "wb") as f:
                    f.write(bytes([mode]) + data)


if __name__ == "__main__":
    main()
