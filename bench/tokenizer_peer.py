#!/usr/bin/env python3
"""The HF `tokenizers` side of bench/tokenizer.sh.

  tokenizer_peer.py prepare DIR   writes DIR/text.txt (a mixed corpus of about 4 MB),
                                  DIR/docs.jsonl (the same text as ~2 KB documents) and
                                  DIR/tokenizer.json (byte-level BPE, 32k vocabulary, Qwen2
                                  pre-tokenizer, trained on the corpus)
  tokenizer_peer.py run DIR       HF's single-thread encode speed, as JSON lines
  tokenizer_peer.py table DIR     the table of DIR/hf.jsonl against DIR/engine.jsonl
"""
import glob
import json
import os
import random
import sys
import sysconfig
import time

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

SCRIPTS = {  # (first, last) code points to draw words from
    "cjk": [(0x4E00, 0x6FFF)], "kana": [(0x3041, 0x3096), (0x30A1, 0x30FA)],
    "hangul": [(0xAC00, 0xB7FF)], "cyrillic": [(0x430, 0x44F)], "greek": [(0x3B1, 0x3C9)],
    "arabic": [(0x627, 0x64A)], "devanagari": [(0x915, 0x939), (0x93E, 0x94C)],
}


def english_and_code(limit_code=2_000_000):
    parts = []
    for p in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(p):
            parts.append(open(p, encoding="utf-8", errors="replace").read())
    code, n = [], 0
    for p in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))):
        s = open(p, encoding="utf-8", errors="replace").read()
        code.append(s)
        n += len(s)
        if n > limit_code:
            break
    return parts, code


def multilingual(rng, n_paragraphs=1500):
    vocab = {}
    for name, ranges in SCRIPTS.items():  # a Zipf-ish vocabulary per script
        words = []
        for _ in range(3000):
            lo, hi = rng.choice(ranges)
            k = rng.randint(1, 4) if name in ("cjk", "kana") else rng.randint(2, 9)
            words.append("".join(chr(rng.randint(lo, hi)) for _ in range(k)))
        vocab[name] = words
    emoji = ["🤗", "🚀", "👍🏽", "👩\u200d👩\u200d👧", "🇫🇷", "❤️", "😀"]
    out = []
    for _ in range(n_paragraphs):
        name = rng.choice(list(vocab))
        sep = "" if name in ("cjk", "kana") else " "
        words = []
        for _ in range(rng.randint(20, 120)):
            r = rng.random()
            if r < 0.05:
                words.append(str(rng.randint(0, 100000)))
            elif r < 0.08:
                words.append(rng.choice(emoji))
            else:
                words.append(vocab[name][min(int(rng.paretovariate(1.1)) - 1, 2999)])
            if rng.random() < 0.1:
                words.append(rng.choice(["，", "。", ", ", ". ", "! ", "? ", "؟ "]))
        out.append(sep.join(words))
    return out


def prepare(d):
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    rng = random.Random(0)
    english, code = english_and_code()
    paragraphs = []
    for s in english + code:
        paragraphs += [p for p in s.split("\n\n") if p.strip()]
    paragraphs += multilingual(rng)
    rng.shuffle(paragraphs)
    docs, cur = [], []
    for p in paragraphs:  # documents of about 2 KB
        cur.append(p)
        if sum(len(x) for x in cur) > 2000:
            docs.append("\n\n".join(cur))
            cur = []
    if cur:
        docs.append("\n\n".join(cur))
    text = "\n\n".join(docs)
    with open(os.path.join(d, "text.txt"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(d, "docs.jsonl"), "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    from tokenizers import decoders
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=32000, show_progress=False,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer)
    tok.save(os.path.join(d, "tokenizer.json"))
    print(f"corpus: {len(text.encode()) / 1e6:.2f} MB in {len(docs)} documents; "
          f"tokenizer: {tok.get_vocab_size()} tokens", file=sys.stderr)


def fnv(h, ids):
    for i in ids:
        h ^= i
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def run(d, repeat=3):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    text = open(os.path.join(d, "text.txt"), encoding="utf-8").read()
    docs = [json.loads(l)["text"] for l in open(os.path.join(d, "docs.jsonl"), encoding="utf-8")]

    def best(once):
        once()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = once()
            times.append(time.perf_counter() - t0)
        return min(times), out

    def emit(name, nbytes, seconds, id_lists):
        tokens = sum(len(x) for x in id_lists)
        h = 1469598103934665603
        for ids in id_lists:
            h = fnv(h, ids)
        print(json.dumps({"workload": name, "bytes": nbytes, "tokens": tokens,
                          "seconds": seconds, "mb_per_s": nbytes / seconds / 1e6,
                          "tokens_per_s": tokens / seconds, "ids_hash": "%016x" % h}))

    s, enc = best(lambda: tok.encode(text, add_special_tokens=False))
    emit("one_text", len(text.encode()), s, [enc.ids])
    s, encs = best(lambda: [tok.encode(x, add_special_tokens=False) for x in docs])
    emit("documents", sum(len(x.encode()) for x in docs), s, [e.ids for e in encs])


def table(d):
    hf = {r["workload"]: r for r in map(json.loads, open(os.path.join(d, "hf.jsonl")))}
    xt = {r["workload"]: r for r in map(json.loads, open(os.path.join(d, "engine.jsonl")))}
    print(f"| workload | implementation | MB/s | tokens/s | speed-up | same ids |")
    print(f"|---|---|---:|---:|---:|---|")
    for w in ("one_text", "documents"):
        h, x = hf[w], xt[w]
        same = "yes" if (h["ids_hash"], h["tokens"]) == (x["ids_hash"], x["tokens"]) else "NO"
        size = f"{w} ({h['bytes'] / 1e6:.1f} MB, {h['tokens']} tokens)"
        print(f"| {size} | HF tokenizers | {h['mb_per_s']:.2f} | {h['tokens_per_s']:,.0f} | 1.00x | |")
        print(f"| {size} | xtuner | {x['mb_per_s']:.2f} | {x['tokens_per_s']:,.0f} | "
              f"{x['mb_per_s'] / h['mb_per_s']:.2f}x | {same} |")


if __name__ == "__main__":
    {"prepare": prepare, "run": run, "table": table}[sys.argv[1]](sys.argv[2])
