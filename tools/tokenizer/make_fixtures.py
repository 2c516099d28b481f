#!/usr/bin/env python3
"""Builds the tokenizer fixtures of tests/data/tokenizers/<name>/ with Hugging Face `tokenizers`.

Each fixture is a tiny BPE tokenizer.json trained here on a small built-in corpus, then edited
into the shape of a real family (Mistral, Llama-2, GPT-2, ...) to cover one set of components,
and a cases.json written by HF itself:

    [{"text", "ids", "ids_special", "decoded", "decoded_skip"}]

ids = encode(text, add_special_tokens=False).ids, ids_special the same with True,
decoded = decode(ids, skip_special_tokens=False), decoded_skip the same with True.

    python3 -m venv /tmp/venv-tok && /tmp/venv-tok/bin/pip install tokenizers
    /tmp/venv-tok/bin/python tools/tokenizer/make_fixtures.py tests/data/tokenizers

The output is deterministic for a given `tokenizers` version.
"""
import json
import os
import sys

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

# ---- Training corpus: a little of many scripts ----

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.",
    "Tokenization splits text into tokens, and byte pair encoding merges frequent pairs.",
    "I'm sure you'll see they've done it, haven't they? We'd like that, wouldn't we?",
    "def encode(text):\n    return [vocab[t] for t in text.split()]  # simple\n",
    "for (int i = 0; i < n; ++i) { sum += x[i] * y[i]; }\r\n",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14159 1,000,000 -17 +8 1e-5",
    "你好，世界！今天天气很好。我们一起去公园散步吧。中文分词很有意思。",
    "日本語のテキストです。東京は大きな都市です。カタカナとひらがな。",
    "한국어 텍스트입니다. 서울은 큰 도시입니다.",
    "مرحبا بالعالم. هذه جملة باللغة العربية.",
    "שלום עולם. זה משפט בעברית.",
    "Привет, мир! Это предложение на русском языке.",
    "Γειά σου κόσμε. Αυτή είναι μια πρόταση.",
    "café naïve résumé coöperate façade jalapeño Straße",
    "emoji 🤗🚀👍🏽 and family 👩‍👩‍👧 flags 🇫🇷🇯🇵 hearts ❤️💙",
    "tabs\tand\tnew\nlines\r\n  indented    text   with   spaces",
    "https://example.com/path?q=1&r=2#frag user@example.org",
    "hello world hello there hello again world peace",
]
CORPUS = CORPUS * 4


def train(model, pre_tokenizer, normalizer, vocab_size, trainer_kwargs=None):
    tok = Tokenizer(model)
    if normalizer is not None:
        tok.normalizer = normalizer
    if pre_tokenizer is not None:
        tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  **(trainer_kwargs or {}))
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return json.loads(tok.to_str())


def added(content, id_, special=True, normalized=False, lstrip=False, rstrip=False,
          single_word=False):
    return {"id": id_, "content": content, "single_word": single_word, "lstrip": lstrip,
            "rstrip": rstrip, "normalized": normalized, "special": special}


def prepend_tokens(model, tokens):
    """Puts `tokens` at the start of the vocabulary (ids 0..), shifting the others."""
    old = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    vocab = {}
    for t in tokens + [t for t, _ in old if t not in tokens]:
        vocab[t] = len(vocab)
    model["vocab"] = vocab


def append_tokens(model, tokens):
    for t in tokens:
        if t not in model["vocab"]:
            model["vocab"][t] = len(model["vocab"])


BYTE_TOKENS = ["<0x%02X>" % b for b in range(256)]


def template(bos=None, eos=None, ids=None):
    single = []
    special = {}
    if bos:
        single.append({"SpecialToken": {"id": bos, "type_id": 0}})
        special[bos] = {"id": bos, "ids": [ids[bos]], "tokens": [bos]}
    single.append({"Sequence": {"id": "A", "type_id": 0}})
    if eos:
        single.append({"SpecialToken": {"id": eos, "type_id": 0}})
        special[eos] = {"id": eos, "ids": [ids[eos]], "tokens": [eos]}
    pair = single + [{"Sequence": {"id": "B", "type_id": 1}}]
    return {"type": "TemplateProcessing", "single": single, "pair": pair,
            "special_tokens": special}


SENTENCEPIECE_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
    {"type": "ByteFallback"}, {"type": "Fuse"},
    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}


def metaspace_fallback():
    """Mistral / Llama-2 (newer files): Metaspace(prepend_scheme first, no split),
    byte_fallback, BOS through TemplateProcessing, added tokens with lstrip / rstrip."""
    specials = ["<unk>", "<s>", "</s>"]
    j = train(models.BPE(unk_token="<unk>"),
              pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False),
              None, 700, {"special_tokens": specials, "limit_alphabet": 120})
    m = j["model"]
    prepend_tokens(m, specials + BYTE_TOKENS)
    append_tokens(m, ["[INST]", "[/INST]", "<tool>"])
    m.update(byte_fallback=True, fuse_unk=True)
    v = m["vocab"]
    j["added_tokens"] = [added(t, v[t]) for t in specials] + [
        added("[INST]", v["[INST]"]), added("[/INST]", v["[/INST]"]),
        added("<tool>", v["<tool>"], special=False, lstrip=True, rstrip=True)]
    j["normalizer"] = None
    j["post_processor"] = template(bos="<s>", ids=v)
    j["decoder"] = SENTENCEPIECE_DECODER
    return j


def llama2_legacy():
    """Llama-2 (legacy files): normalizer Prepend + Replace, no pre-tokenizer, unk fused (no
    byte fallback), BOS and EOS; a normalized added token and a single_word one."""
    specials = ["<unk>", "<s>", "</s>"]
    norm = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    j = train(models.BPE(unk_token="<unk>"), None, norm, 600,
              {"special_tokens": specials, "limit_alphabet": 90})
    m = j["model"]
    prepend_tokens(m, specials)
    append_tokens(m, ["hello▁world", "foo", "▁<x>"])
    m.update(byte_fallback=False, fuse_unk=True)
    v = m["vocab"]
    j["added_tokens"] = [added(t, v[t]) for t in specials] + [
        added("hello world", v["hello▁world"], special=False, normalized=True),
        added("foo", v["foo"], special=False, single_word=True),
        added("<x>", v["▁<x>"], special=False, normalized=True, lstrip=True)]
    j["pre_tokenizer"] = None
    j["post_processor"] = template(bos="<s>", eos="</s>", ids=v)
    j["decoder"] = SENTENCEPIECE_DECODER
    return j


def bytelevel_gpt2():
    """GPT-2: NFKC, ByteLevel with its own regex and add_prefix_space, merges as "a b"
    strings, ignore_merges with tokens that no merge reaches, ByteLevel post-processor."""
    j = train(models.BPE(), pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
              normalizers.NFKC(), 900,
              {"special_tokens": ["<|endoftext|>"],
               "initial_alphabet": pre_tokenizers.ByteLevel.alphabet()})
    m = j["model"]
    m["merges"] = [a + " " + b for a, b in m["merges"]]
    append_tokens(m, ["Ġtokenization", "Ġzyx", "ĠĠĠĠĠĠĠĠ"])
    m["ignore_merges"] = True
    v = m["vocab"]
    j["added_tokens"] = [added("<|endoftext|>", v["<|endoftext|>"])]
    j["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                           "use_regex": True}
    j["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True}
    return j


def split_behaviors():
    """Every Split behaviour, invert, string and regex patterns, Digits, a Replace normalizer,
    and a Llama-3 style Sequence post-processor (ByteLevel then TemplateProcessing)."""
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=",", behavior="merged_with_previous"),
        pre_tokenizers.Split(pattern="-", behavior="merged_with_next"),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    norm = normalizers.Sequence([normalizers.NFC(),
                                 normalizers.Replace("\t", "    ")])
    j = train(models.BPE(), pre, norm, 700,
              {"special_tokens": ["<|begin_of_text|>", "<|end_of_text|>"],
               "initial_alphabet": pre_tokenizers.ByteLevel.alphabet()})
    v = j["model"]["vocab"]
    from tokenizers import Regex  # noqa: F401 (patterns are written as JSON below)
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": ","}, "behavior": "MergedWithPrevious",
         "invert": False},
        {"type": "Split", "pattern": {"String": "-"}, "behavior": "MergedWithNext",
         "invert": False},
        {"type": "Split", "pattern": {"Regex": r"[!?.]+"}, "behavior": "Contiguous",
         "invert": False},
        {"type": "Split", "pattern": {"Regex": r"\s+"}, "behavior": "Removed", "invert": False},
        {"type": "Split", "pattern": {"Regex": r"\p{L}+"}, "behavior": "Isolated",
         "invert": True},
        {"type": "Digits", "individual_digits": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
         "use_regex": False}]}
    j["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        template(bos="<|begin_of_text|>", eos="<|end_of_text|>", ids=v)]}
    j["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True}
    return j


def metaspace_digits():
    """Digits (individual) before Metaspace(prepend_scheme always, split) with the legacy
    add_prefix_space field, NFKC (fullwidth, ligatures, superscripts), Metaspace decoder."""
    pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                   pre_tokenizers.Metaspace(replacement="▁",
                                                            prepend_scheme="always", split=True)])
    j = train(models.BPE(unk_token="<unk>"), pre, normalizers.NFKC(), 600,
              {"special_tokens": ["<unk>", "<pad>"], "limit_alphabet": 150})
    j["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = True
    v = j["model"]["vocab"]
    j["added_tokens"] = [added("<unk>", v["<unk>"]), added("<pad>", v["<pad>"])]
    j["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always",
                    "split": True}
    return j


def subword_affixes():
    """continuing_subword_prefix and end_of_word_suffix, BertPreTokenizer, NFD + Lowercase +
    Strip, BPEDecoder, RobertaProcessing."""
    norm = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(),
                                 normalizers.Strip()])
    j = train(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##",
                         end_of_word_suffix="</w>"),
              pre_tokenizers.BertPreTokenizer(), norm, 700,
              {"special_tokens": ["[UNK]", "<s>", "</s>"], "limit_alphabet": 100,
               "continuing_subword_prefix": "##", "end_of_word_suffix": "</w>"})
    v = j["model"]["vocab"]
    j["post_processor"] = {"type": "RobertaProcessing", "sep": ["</s>", v["</s>"]],
                           "cls": ["<s>", v["<s>"]], "trim_offsets": True,
                           "add_prefix_space": False}
    j["decoder"] = {"type": "BPEDecoder", "suffix": "</w>"}
    return j


def whitespace_punct():
    """Whitespace, Punctuation (contiguous), WhitespaceSplit, then Metaspace(prepend_scheme
    first, split) after them, and a Strip normalizer that keeps the left side."""
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Punctuation(behavior="contiguous"),
        pre_tokenizers.Whitespace(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)])
    norm = normalizers.Strip(left=False, right=True)
    j = train(models.BPE(unk_token="<unk>"), pre, norm, 500,
              {"special_tokens": ["<unk>", "<sep>"], "limit_alphabet": 200})
    j["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first",
                    "split": True}
    return j


FIXTURES = {
    "bpe_metaspace_fallback": metaspace_fallback,
    "bpe_llama2_legacy": llama2_legacy,
    "bpe_bytelevel_gpt2": bytelevel_gpt2,
    "bpe_split_behaviors": split_behaviors,
    "bpe_metaspace_digits": metaspace_digits,
    "bpe_subword_affixes": subword_affixes,
    "bpe_whitespace_punct": whitespace_punct,
}

# ---- Cases: Unicode-heavy, whitespace, digits, special tokens in many positions ----

TEXTS = [
    "",
    "Hello world",
    "Hello, world! How are you?",
    " leading space",
    "trailing space ",
    "two  spaces   three    four",
    " " * 40 + "forty spaces before",
    "line1\nline2\r\nline3\n\n\nend\r\n",
    "tabs\t\tand\tmore\t",
    "I'm sure you'll see they've DONE it, haven't they? DON'T",
    "1234567890 and 3.14159 and 1,000,000 and -17",
    "fullwidth １２３ superscript x² circled ① roman Ⅻ arabic-indic ٣٤٥",
    "ligatures ﬁ ﬂ ﬀ and ㎏ ℃ ™ ½",
    "x = foo(bar, baz) + 42  # comment\n    return x",
    "你好，世界！今天天气很好。",
    "日本語のテキストです",
    "한국어 텍스트",
    "مرحبا بالعالم",
    "שלום עולם",
    "mixed RTL: abc \u200fאבג\u200e def \u202bمرحبا\u202c",
    "café naïve résumé",
    "decomposed: cafe\u0301 nai\u0308ve A\u030a \u1100\u1161\u11a8",
    "combining marks: a\u0300\u0301\u0302 q\u0323\u0307 \u0915\u094d\u0937",
    "emoji 🤗🚀👍🏽 and ZWJ 👩\u200d👩\u200d👧 👨🏿\u200d💻 flags 🇫🇷",
    "keycaps 1\ufe0f\u20e3 #\ufe0f\u20e3 hearts ❤️ ❤",
    "control \x01\x02\x7f chars \u0085 nel \u2028 ls \u2029 ps \x0b\x0c",
    "zero width \u200b\u200c\u200d\ufeff joiners",
    "nbsp\u00a0thin\u2009ideographic\u3000space",
    "Привет, мир! Γειά σου κόσμε.",
    "https://example.com/path?q=1&r=2#frag",
    "!!!???...---,,,;;;",
    "a-b-c d,e,f g--h ,,i",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "literal bytes <0x41> <0xZZ> and ▁ metaspace ▁▁ chars",
    "hello world hello worlds helloworld hello  world",
    "foo food foo_bar (foo) foo. xfoo foo",
    "<x> and  <x>  spaced <x>",
    " tokenization zyx         eight",
    "<s>",
    "</s>",
    "<s>[INST] question [/INST] answer</s>",
    "<unk> <pad> [UNK]",
    "<|endoftext|>text<|endoftext|>",
    "<|begin_of_text|>hi<|end_of_text|>",
    "<tool>  call  <tool>x<tool>",
    "<s> <s>  <s>\n</s>",
]


def cases_for(tok):
    out = []
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        out.append({
            "text": text,
            "ids": ids,
            "ids_special": tok.encode(text, add_special_tokens=True).ids,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip": tok.decode(ids, skip_special_tokens=True),
        })
    return out


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "tests/data/tokenizers"
    for name, build in FIXTURES.items():
        j = build()
        text = json.dumps(j, ensure_ascii=False)
        tok = Tokenizer.from_str(text)  # HF must accept it as it is
        d = os.path.join(root, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(text)
        with open(os.path.join(d, "cases.json"), "w", encoding="utf-8") as f:
            json.dump(cases_for(tok), f, ensure_ascii=False, indent=0)
        print(f"{name}: vocab {tok.get_vocab_size()}, {len(TEXTS)} cases, "
              f"{os.path.getsize(os.path.join(d, 'tokenizer.json'))} bytes")


if __name__ == "__main__":
    main()
