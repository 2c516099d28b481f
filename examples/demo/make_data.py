#!/usr/bin/env python3
"""Generates the demo's learnable SFT task: reverse a short sequence of letters.

  user:      "reverse: b x k q"
  assistant: "q k x b"

Writes train.jsonl (chat messages) and eval.jsonl ({"prompt", "answer"}) whose prompts never
occur in train.jsonl. Deterministic (seeded); the committed files are its output:
    python3 examples/demo/make_data.py
"""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def sequences(rng, n):
    seen = set()
    while len(seen) < n:
        k = rng.randint(3, 5)
        seen.add(" ".join(rng.choice(LETTERS) for _ in range(k)))
    return sorted(seen)


def main():
    rng = random.Random(2026)
    seqs = sequences(rng, 6200)
    rng.shuffle(seqs)
    held_out, train = seqs[:200], seqs[200:]
    with open(os.path.join(HERE, "train.jsonl"), "w") as f:
        for s in train:
            answer = " ".join(reversed(s.split()))
            f.write(json.dumps({"messages": [
                {"role": "user", "content": "reverse: " + s},
                {"role": "assistant", "content": answer}]}) + "\n")
    with open(os.path.join(HERE, "eval.jsonl"), "w") as f:
        for s in held_out:
            f.write(json.dumps({"prompt": "reverse: " + s,
                                "answer": " ".join(reversed(s.split()))}) + "\n")


if __name__ == "__main__":
    main()
