#!/usr/bin/env python3
"""Builds the chat-template test fixtures under tests/data/tokenizers/.

  chat_qwen3/, chat_llama3/, chat_deepseek_v3/, chat_gpt_oss/
      tokenizer.json: a small byte-level BPE (vocab 1000) trained with HF `tokenizers` on a
      generated corpus, plus the special tokens of that model family (ids after the vocabulary,
      "special" and "normalized" as in the real models: Qwen3's <think> and tool markers are added
      tokens that are not special; GPT-OSS's are its harmony tokens, with o200k's pattern).
      tokenizer_config.json: bos/eos tokens and the family's real chat_template.
  chat_templates/expected.json
      Ground truth from transformers' apply_chat_template (add_generation_prompt=False) with the
      real templates in chat_templates/*.jinja:
        detect:  template file -> the built-in name xtuner should recognise (null: none)
        renders: {template, source, case, tokenizer, sample, text, ids[, options]}: `sample` is
                 the JSONL sample (OpenAI format) given to both sides, `text` what transformers
                 renders, `ids` HF tokenizers' encoding of that text (add_special_tokens=False);
                 `options` (harmony): the template's kwargs, `date` standing in for the
                 `strftime_now` date.
        errors:  {template, case, sample}: samples xtuner refuses to render with that template
                 (a thinking or a tool call the template would drop; see chat_template_*.cc;
                 harmony's own refusals are checked to fail in transformers too).

The *.jinja files are the models' own templates. Most are llama.cpp's copies
(models/templates/, fetched from the Hugging Face repos by its scripts/get_chat_template.py)
as shipped in the PyPI sdist llama-cpp-python 0.3.36
(pip download llama-cpp-python==0.3.36 --no-deps --no-binary :all:):
  Qwen-Qwen3-0.6B, meta-llama-Llama-3.1-8B-Instruct, -3.2-3B-Instruct, -3.3-70B-Instruct,
  Qwen-Qwen2.5-7B-Instruct, Qwen-QwQ-32B, Qwen3-Coder, deepseek-ai-DeepSeek-R1-Distill-Llama-8B,
  deepseek-ai-DeepSeek-V3.1, openai-gpt-oss-120b (the chat_template.jinja of openai/gpt-oss-20b
  and -120b).
  meta-llama-Meta-Llama-3-8B-Instruct: LLAMA3_INSTRUCT_CHAT_TEMPLATE of the same sdist's
  llama_cpp/llama_chat_format.py.
  deepseek-ai-DeepSeek-V3-0324: the chat_template of deepseek-ai/DeepSeek-V3-0324's
  tokenizer_config.json (written out by hand; its structure checked against a public copy).
  chatml: the ChatML example of transformers' chat-templating documentation.

Usage (from the repository root, in a venv outside it):
  python -m venv /work/venv-chat && /work/venv-chat/bin/pip install tokenizers transformers jinja2
  /work/venv-chat/bin/python tools/tokenizer/make_chat_tokenizers.py
The output is deterministic for fixed package versions (tokenizers 0.23.3, transformers 5.24.0;
transformers 5.17.0 writes the same bytes).
"""

import argparse
import json
import os
import random

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, trainers

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# o200k (GPT-OSS's tokenizer.json)
O200K_PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                 r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                 r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                 r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                 r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# (special, not special) added tokens, bos, eos, pattern, per family.
FAMILIES = {
    "chat_qwen3": dict(
        special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        added=["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>",
               "</tool_response>"],
        bos=None, eos="<|im_end|>", pattern=QWEN2_PATTERN, template="Qwen-Qwen3-0.6B.jinja"),
    "chat_llama3": dict(
        special=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                 "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"],
        added=[],
        bos="<|begin_of_text|>", eos="<|eot_id|>", pattern=LLAMA3_PATTERN,
        template="meta-llama-Llama-3.1-8B-Instruct.jinja"),
    "chat_deepseek_v3": dict(
        special=["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
                 "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>",
                 "<｜tool▁call▁end｜>", "<｜tool▁sep｜>", "<｜tool▁outputs▁begin｜>",
                 "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"],
        added=["<think>", "</think>"],
        bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>", pattern=LLAMA3_PATTERN,
        template="deepseek-ai-DeepSeek-V3-0324.jinja"),
    "chat_gpt_oss": dict(
        special=["<|startoftext|>", "<|endoftext|>", "<|return|>", "<|constrain|>", "<|channel|>",
                 "<|start|>", "<|end|>", "<|message|>", "<|call|>"],
        added=[],
        bos="<|startoftext|>", eos="<|return|>", pattern=O200K_PATTERN,
        template="openai-gpt-oss-120b.jinja"),
}

# template file -> (built-in name or None, tokenizer family used to render it)
TEMPLATES = {
    "chatml.jinja": ("chatml", "chat_qwen3"),
    "Qwen-Qwen3-0.6B.jinja": ("qwen3", "chat_qwen3"),
    "meta-llama-Meta-Llama-3-8B-Instruct.jinja": ("llama3", "chat_llama3"),
    "meta-llama-Llama-3.1-8B-Instruct.jinja": ("llama3.1", "chat_llama3"),
    "meta-llama-Llama-3.2-3B-Instruct.jinja": ("llama3.1", None),
    "meta-llama-Llama-3.3-70B-Instruct.jinja": ("llama3.1", None),
    "deepseek-ai-DeepSeek-V3-0324.jinja": ("deepseek-v3", "chat_deepseek_v3"),
    "openai-gpt-oss-120b.jinja": ("harmony", "chat_gpt_oss"),
    "Qwen-Qwen2.5-7B-Instruct.jinja": (None, None),
    "Qwen-QwQ-32B.jinja": (None, None),
    "Qwen3-Coder.jinja": (None, None),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja": (None, None),
    "deepseek-ai-DeepSeek-V3.1.jinja": (None, None),
}

WORDS = ("the of and to in is you that it he was for on are as with his they at be this have "
         "from or one had by word but not what all were we when your can said there use an each "
         "which she do how their if will up other about out many then them these so some her "
         "would make like him into time has look two more write go see number no way could people "
         "my than first water been call who oil its now find long down day did get come made may "
         "part weather city Paris London temperature celsius sunny answer question user assistant "
         "system tool function name arguments result think reasoning step plan check search "
         "query json value true false null list string number object").split()
CJK = "你好世界今天天气很好我们一起学习中文模型训练数据问题答案思考工具调用结果北京上海"
EXTRA = ["Grüße", "naïve", "café", "über", "שלום", "مرحبا", "Привет", "こんにちは", "안녕하세요",
         "🌍", "🙂", "☃", "é", "—", "…", "«", "»"]


def corpus(seed=1234, lines=3000):
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        kind = i % 6
        if kind == 0:
            out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) + ".")
        elif kind == 1:
            out.append("".join(rng.choice(CJK) for _ in range(rng.randint(5, 30))))
        elif kind == 2:
            d = {rng.choice(WORDS): rng.choice([rng.randint(0, 999), rng.choice(WORDS), True, None])
                 for _ in range(rng.randint(1, 4))}
            out.append(json.dumps({"name": rng.choice(WORDS), "arguments": d}))
        elif kind == 3:
            out.append(" ".join(rng.choice(EXTRA + WORDS) for _ in range(rng.randint(3, 12))))
        elif kind == 4:
            out.append("def %s(x):\n    return x + %d\n" % (rng.choice(WORDS), rng.randint(0, 99)))
        else:
            out.append("\n".join(" ".join(rng.choice(WORDS) for _ in range(4)) for _ in range(3)))
    return out


def build_tokenizer(fam):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(fam["pattern"]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in fam["special"]])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in fam["added"]])
    return tok


def fn_tool(name, desc, params):
    return {"type": "function",
            "function": {"name": name, "description": desc,
                         "parameters": {"type": "object", "properties": params,
                                        "required": list(params)}}}


TOOLS = [
    fn_tool("get_weather", "Météo — 天气 for a city", {"city": {"type": "string"}}),
    fn_tool("add", "Adds two numbers", {"b": {"type": "number"}, "a": {"type": "number"}}),
]


def call(name, args):
    return {"type": "function", "function": {"name": name, "arguments": args}}


def cases():
    """name -> sample (OpenAI format). Arguments are strings unless a case says otherwise."""
    sys_msg = {"role": "system", "content": "You are a helpful assistant."}
    return {
        "basic": {"messages": [
            sys_msg,
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "2+2 = 4."},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "3+3 = 6."}]},
        "no_system": {"messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"}]},
        "trailing_user": {"messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"}]},
        "thinking": {"messages": [
            sys_msg,
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "2 plus 2 is 4."},
            {"role": "user", "content": "Times 3?"},
            {"role": "assistant", "content": "12", "reasoning_content": "\n4 times 3 is 12.\n"}]},
        "inline_think": {"messages": [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "<think>\nplan one\n</think>\n\nA1"},
            {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": "<think>plan two</think>A2"}]},
        "tool": {"tools": TOOLS, "messages": [
            sys_msg,
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "",
             "tool_calls": [call("get_weather", "{\"city\": \"Paris\"}")]},
            {"role": "tool", "name": "get_weather", "content": "{\"temp_c\": 21, \"sky\": \"sunny\"}"},
            {"role": "assistant", "content": "It is 21 °C and sunny in Paris."}]},
        "tool_no_system": {"tools": TOOLS[:1], "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "",
             "tool_calls": [call("get_weather", {"city": "Paris"})]},
            {"role": "tool", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."}]},
        "multi_step": {"tools": TOOLS, "messages": [
            {"role": "user", "content": "Add 1 and 2, and get the weather in Rome."},
            {"role": "assistant", "content": "Let me call both.", "reasoning_content": "Two tools.",
             "tool_calls": [call("add", {"b": 2, "a": 1.5}),
                            call("get_weather", "{\"city\":\"Rome\"}")]},
            {"role": "tool", "content": "3.5"},
            {"role": "tool", "content": "rainy"},
            {"role": "assistant", "content": "3.5, and rainy in Rome.",
             "reasoning_content": "Both results are in."}]},
        "multi_call": {"messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": "",
             "tool_calls": [call("get_weather", "{\"city\": \"Paris\"}"),
                            call("get_weather", "{\"city\": \"Rome\"}")]},
            {"role": "tool", "content": "sunny"},
            {"role": "tool", "content": "rainy"},
            {"role": "assistant", "content": "Paris: sunny. Rome: rainy."},
            {"role": "user", "content": "And Oslo?"},
            {"role": "assistant", "content": "Checking.",
             "tool_calls": [call("get_weather", "{\"city\": \"Oslo\"}")]},
            {"role": "tool", "content": "snow"},
            {"role": "assistant", "content": "Snow in Oslo."}]},
        "whitespace": {"messages": [
            {"role": "system", "content": "  Be brief.  \n"},
            {"role": "user", "content": "\n  hi there \t\n"},
            {"role": "assistant", "content": "  hello  \n\n"}]},
        "unicode": {"messages": [
            {"role": "user", "content": "你好 🌍 e\u0301 שלום \u200f مرحبا \u0007tab\there"},
            {"role": "assistant", "content": "Grüße — ☃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u2028 line\u3000end"}]},
    }


# Tools whose JSON schemas reach every branch of the harmony template's TypeScript rendering.
SCHEMA_TOOLS = [
    {"type": "function", "function": {
        "name": "search", "description": "Searches the catalogue",
        "parameters": {"type": "object", "required": ["query", "either"], "properties": {
            "query": {"type": "string", "description": "What to look for"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "scores": {"type": "array", "items": {"type": "integer"}},
            "weights": {"type": "array", "items": {"type": "number"}},
            "flags": {"type": "array", "items": {"type": "boolean"}},
            "anything": {"type": "array"},
            "points": {"type": "array", "items": {
                "type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                "required": ["x"]}},
            "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "records": {"type": "array", "items": {"type": "object", "properties": {
                "alpha_long_name": {"type": "string"}, "beta_long_name": {"type": "string"},
                "gamma": {"type": "number"}}}},
            "pairs": {"type": "array", "items": {"type": ["object", "object"]}},
            "mode": {"type": "string", "enum": ["fast", "exact"], "default": "fast"},
            "limit": {"type": "integer", "default": 10, "description": "Most results"},
            "exact": {"type": "boolean", "default": False},
            "note": {"type": "string", "nullable": True},
            "ids": {"type": "array", "items": {"type": "string"}, "nullable": True},
            "loose": {"type": "array", "nullable": True},
            "either": {"type": ["string", "number"]},
            "single": {"type": ["object"]},
            "choice": {"oneOf": [{"type": "string", "description": "a name"},
                                 {"type": "integer", "default": 3}], "default": "x"},
            "mixed": {"oneOf": [{"type": "object"}, {"type": "string"}]},
            "shape": {"type": "object", "required": ["w"], "properties": {
                "w": {"type": "integer"}, "h": {"type": "integer", "enum": [1]},
                "inner": {"type": "object", "properties": {"z": {"type": "boolean"}}}}},
            "blob": {"type": "object"},
            "misc": {"description": "Anything at all"},
            "unit": {"type": "string", "default": "°C"},
            "nothing": {"type": "null", "default": None},
            "origin": {"type": "object", "default": {"x": 0, "y": 1.5}},
        }}}},
    {"type": "function", "function": {"name": "now", "description": "The time — 现在",
                                      "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {"name": "ping", "description": "Pings"}},
]


def harmony_cases():
    """name -> (sample, options): conversations for the harmony template only; options are the
    template's kwargs (date stands for strftime_now's date)."""
    return {
        "harmony_developer_schema_tools": ({"tools": SCHEMA_TOOLS, "messages": [
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": "Find \"café\" records."},
            {"role": "assistant", "content": "", "thinking": "I will search the catalogue.",
             "tool_calls": [call("search", {"query": "café", "either": 2.5,
                                            "shape": {"w": 1, "h": [1, None]}})]},
            {"role": "tool", "content": "[{\"name\": \"Café de Flore\"}]\n\"done\"\t☃"},
            {"role": "assistant", "content": "Le Café de Flore.",
             "thinking": "One record came back."}]},
            {"date": "2025-08-05", "reasoning_effort": "high"}),
        "harmony_analysis_kept": ({"tools": TOOLS, "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "Let me check the weather.",
             "tool_calls": [call("get_weather", "{\"city\": \"Paris\"}")]},
            {"role": "tool", "content": "sunny"}]},
            {"date": "2024-12-31", "reasoning_effort": "low",
             "model_identity": "You are Tutor, a patient teacher."}),
        "harmony_multi_turn": ({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "thinking": "Two and two make four."},
            {"role": "system", "content": "A later system message, which harmony drops."},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "6", "thinking": "Three and three."}]},
            {"date": "2026-01-02"}),
        "harmony_tools_without_instructions": ({"tools": TOOLS[1:], "messages": [
            {"role": "system", "content": ""},
            {"role": "user", "content": "Add 1 and 2."},
            {"role": "assistant", "content": "",
             "tool_calls": [call("add", {"a": 1, "b": 2})]},
            {"role": "tool", "content": "3"},
            {"role": "assistant", "content": "3."}]},
            {"date": "2025-08-05"}),
    }


# Samples the harmony template itself refuses (raise_exception or a missing key), and xtuner too.
HARMONY_REFUSED = {
    "harmony_channel_in_content": {"messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<|channel|>final<|message|>Hello"}]},
    "harmony_content_and_thinking_with_call": {"tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Checking.", "thinking": "Call it.",
         "tool_calls": [call("get_weather", {"city": "Oslo"})]},
        {"role": "tool", "content": "snow"}]},
    "harmony_tool_without_call": {"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "tool", "content": "snow"},
        {"role": "assistant", "content": "Snow."}]},
    "harmony_tool_without_description": {"tools": [
        {"type": "function", "function": {"name": "ping", "parameters": {}}}], "messages": [
        {"role": "user", "content": "Ping."},
        {"role": "assistant", "content": "Pong."}]},
}

HARMONY_DEFAULT_OPTIONS = {"date": "2025-08-05"}


def harmony_kwargs(options):
    """apply_chat_template kwargs for harmony options (the date replaces strftime_now's)."""
    import datetime
    kw = {k: v for k, v in options.items() if k != "date"}
    day = datetime.date.fromisoformat(options["date"])
    kw["strftime_now"] = lambda fmt: day.strftime(fmt)
    return kw


def applicable(name, sample):
    """'golden', 'error' (xtuner refuses) or 'skip' (xtuner's rendering differs on purpose)."""
    msgs = sample["messages"]
    thinking = any(m.get("reasoning_content") for m in msgs)
    calls = [m for m in msgs if m.get("tool_calls")]
    if name == "harmony":
        # One tool call per message; with tool calls, content (the analysis) or thinking.
        if any(len(m["tool_calls"]) > 1 or (m.get("content") and m.get("thinking")) for m in calls):
            return "error"
        return "golden"
    if thinking and name != "qwen3":
        return "error"
    if name == "llama3" and calls:
        return "error"
    if name == "llama3.1" and any(len(m["tool_calls"]) > 1 or m["content"].strip() for m in calls):
        return "error"
    if name == "chatml" and (calls or sample.get("tools")):
        return "skip"
    return "golden"


def for_template(name, sample):
    """The sample as given to that template: DeepSeek's template concatenates arguments (strings
    only); Llama 3.1's applies tojson (objects; xtuner re-serialises strings on purpose)."""
    s = json.loads(json.dumps(sample))
    for m in s["messages"]:
        for c in m.get("tool_calls", []):
            a = c["function"]["arguments"]
            if name == "deepseek-v3" and not isinstance(a, str):
                c["function"]["arguments"] = json.dumps(a, ensure_ascii=False)
            if name in ("llama3.1", "harmony") and isinstance(a, str):
                c["function"]["arguments"] = json.loads(a)
        # The harmony template reads only "thinking"; xtuner takes either name.
        if name == "harmony" and "reasoning_content" in m:
            m["thinking"] = m.pop("reasoning_content")
    return s


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(root, "tests", "data", "tokenizers"))
    args = ap.parse_args()
    tdir = os.path.join(args.out, "chat_templates")

    from transformers import PreTrainedTokenizerFast

    hf = {}
    for fam_name, fam in FAMILIES.items():
        d = os.path.join(args.out, fam_name)
        os.makedirs(d, exist_ok=True)
        tok = build_tokenizer(fam)
        tok.save(os.path.join(d, "tokenizer.json"))
        size = os.path.getsize(os.path.join(d, "tokenizer.json"))
        assert size < 200_000, (fam_name, size)
        with open(os.path.join(tdir, fam["template"]), encoding="utf-8") as f:
            template = f.read()
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": fam["bos"],
                  "eos_token": fam["eos"], "model_max_length": 131072,
                  "clean_up_tokenization_spaces": False, "chat_template": template}
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, ensure_ascii=False, indent=2)
            f.write("\n")
        hf[fam_name] = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"),
                                               bos_token=fam["bos"], eos_token=fam["eos"])

    expected = {"detect": [], "renders": [], "errors": []}
    for fname, (name, fam_name) in TEMPLATES.items():
        expected["detect"].append({"file": fname, "name": name})
        if fam_name is None:
            continue
        with open(os.path.join(tdir, fname), encoding="utf-8") as f:
            template = f.read()
        tok = hf[fam_name]
        all_cases = {c: (s, None) for c, s in cases().items()}
        if name == "harmony":
            all_cases = {c: (s, HARMONY_DEFAULT_OPTIONS) for c, s in cases().items()}
            all_cases.update(harmony_cases())
        for case, (sample, options) in all_cases.items():
            s = for_template(name, sample)
            kind = applicable(name, s)
            if kind == "error":
                expected["errors"].append({"template": name, "case": case, "sample": s})
            if kind != "golden":
                continue
            kwargs = harmony_kwargs(options) if options else {}
            text = tok.apply_chat_template(s["messages"], tools=s.get("tools"), tokenize=False,
                                           add_generation_prompt=False, chat_template=template,
                                           **kwargs)
            ids = tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
            entry = {"template": name, "source": fname, "case": case, "tokenizer": fam_name,
                     "sample": s, "text": text, "ids": ids}
            if options:
                entry["options"] = options
            expected["renders"].append(entry)
        if name == "harmony":
            for case, s in HARMONY_REFUSED.items():
                try:
                    tok.apply_chat_template(s["messages"], tools=s.get("tools"), tokenize=False,
                                            chat_template=template,
                                            **harmony_kwargs(HARMONY_DEFAULT_OPTIONS))
                except Exception:  # raise_exception, or an undefined key
                    expected["errors"].append({"template": name, "case": case, "sample": s})
                else:
                    raise AssertionError("transformers rendered " + case)
    with open(os.path.join(tdir, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("renders: %d, errors: %d" % (len(expected["renders"]), len(expected["errors"])))


if __name__ == "__main__":
    main()
