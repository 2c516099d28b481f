"""LoRA ground truth for tests/data/lora/<case>/, made with PEFT on transformers (float64).

For each case: a base fixture of tests/data (its model.safetensors and its batch), a PEFT
LoraConfig, and adapter weights drawn from a seeded normal (not PEFT's zero B, so that every
adapter gradient is non-zero). Writes:
  adapter_config.json, adapter_model.safetensors   as PEFT's save_pretrained writes them
                                                   (float32, the engine loads these);
  (cases with `params`: PEFT's target_parameters on the routed experts' stacked weights,
  mlp.experts.gate_up_proj (E, 2I, H) and mlp.experts.down_proj (E, H, I); GPT-OSS's
  (E, H, 2I) gate and up interleaved, and (E, I, H))
  reference.safetensors (float64):
    input_ids, labels                the base fixture's batch;
    logits, loss, ce_loss            the PEFT model's forward (loss as the model returns it:
                                     + router_aux_loss_coef * aux_loss for a softmax MoE);
    grad.<name>                      d loss / d every adapter weight, <name> as PEFT saves it
                                     less "base_model.model." (every base weight is frozen);
    merged.<hub name>                every adapted weight after merge_and_unload (an expert's
                                     by its checkpoint's per-expert names, sliced from the
                                     merged stacked weight; GPT-OSS's stacked, as its
                                     checkpoints hold them).
Usage: /work/venv-ref/bin/python tools/reference/make_lora_reference.py [--out tests/data/lora]
"""
import argparse
import json
import os
import shutil
import tempfile

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.normpath(os.path.join(HERE, "..", "..", "tests", "data"))

CASES = {
    # every linear layer of a dense model, scale alpha / r = 2
    "qwen3_dense_all": dict(base="qwen3_dense_tiny", seed=7001, r=4, alpha=8,
                            targets="all-linear", rslora=False),
    # attention only (the routed experts take no adapters), rsLoRA: scale 3 / sqrt(2)
    "qwen3_moe_attn_rslora": dict(base="qwen3_moe_tiny", seed=7002, r=2, alpha=3,
                                  targets=["q_proj", "v_proj", "o_proj"], rslora=True),
    # MLA's projections (PEFT maps gate_proj / up_proj / down_proj of a transformers-5 MoE
    # model onto its routed experts too, which the engine does not adapt)
    "deepseek_v3_mla": dict(base="deepseek_v3_tiny", seed=7003, r=4, alpha=4,
                            targets=["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj",
                                     "o_proj"],
                            rslora=False),
    # the routed experts' both weights (PEFT nests two ParamWrappers: gate_up_proj's is the
    # inner, "experts.base_layer.lora_A") beside two attention projections
    "qwen3_moe_experts": dict(base="qwen3_moe_tiny", seed=7004, r=2, alpha=4,
                              targets=["q_proj", "o_proj"],
                              params=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
                              rslora=False),
    # the experts' down_proj alone (one ParamWrapper: "experts.lora_A"), nothing else, rsLoRA
    "mixtral_experts_down": dict(base="mixtral_tiny", seed=7005, r=3, alpha=6, targets=[],
                                 params=["experts.down_proj"], rslora=True),
    # DeepSeek-V3: gate_up_proj alone beside MLA projections (layer 0 is dense)
    "deepseek_v3_experts": dict(base="deepseek_v3_tiny", seed=7006, r=2, alpha=2,
                                targets=["q_a_proj", "kv_b_proj"], params=["gate_up_proj"],
                                rslora=False),
    # GPT-OSS as OpenAI's cookbook adapts it: all-linear (its attention) and one layer's experts
    # by layer index (its experts are stored transposed, gate and up interleaved)
    "gpt_oss_experts_layer1": dict(base="variants/gpt_oss_tiny", seed=7007, r=2, alpha=4,
                                   targets="all-linear",
                                   params=["1.mlp.experts.gate_up_proj",
                                           "1.mlp.experts.down_proj"],
                                   rslora=False),
    # every layer's down_proj alone (the wrapper not nested), rsLoRA
    "gpt_oss_experts_down": dict(base="variants/gpt_oss_tiny", seed=7008, r=3, alpha=3,
                                 targets=["q_proj"], params=["mlp.experts.down_proj"],
                                 rslora=True),
}

PREFIX = "base_model.model."


def load_base(base_dir):
    cfg = transformers.AutoConfig.from_pretrained(base_dir)
    kw = dict(dtype=torch.float32, attn_implementation="eager")
    cls = transformers.AutoModelForCausalLM
    try:
        model = cls.from_pretrained(base_dir, experts_implementation="eager", **kw)
    except (TypeError, ValueError):
        model = cls.from_pretrained(base_dir, **kw)
    return cfg, model


def build(name, spec, out_root):
    base_dir = os.path.join(DATA, spec["base"])
    cfg, model = load_base(base_dir)
    lc = LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], target_modules=spec["targets"],
                    target_parameters=spec.get("params"), lora_dropout=0.0,
                    use_rslora=spec["rslora"], task_type="CAUSAL_LM")
    pm = get_peft_model(model, lc)
    gen = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * 0.2)
    out_dir = os.path.join(out_root, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    pm.save_pretrained(out_dir)
    for extra in ("README.md",):
        if os.path.exists(os.path.join(out_dir, extra)):
            os.remove(os.path.join(out_dir, extra))
    # The base by its place in the repository, not this machine's absolute path.
    cfg_path = os.path.join(out_dir, "adapter_config.json")
    with open(cfg_path) as f:
        ac = json.load(f)
    ac["base_model_name_or_path"] = "tests/data/" + spec["base"]
    with open(cfg_path, "w") as f:
        json.dump(ac, f, indent=2, sort_keys=True)
        f.write("\n")

    # Reload exactly as a user would (base from disk + the saved adapter), in float64.
    _, base = load_base(base_dir)
    pm = PeftModel.from_pretrained(base, out_dir, is_trainable=True).double()
    ref = load_file(os.path.join(base_dir, "reference.safetensors"))
    input_ids, labels = ref["input_ids"], ref["labels"]
    pm.train()
    is_moe = getattr(cfg, "num_experts", 0) or getattr(cfg, "num_local_experts", 0)
    kw = dict(output_router_logits=True) if is_moe and cfg.model_type != "deepseek_v3" else {}
    out = pm(input_ids=input_ids, labels=labels, use_cache=False, **kw)
    out.loss.backward()
    logits = out.logits.detach()
    V = logits.shape[-1]
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V),
                                           labels[:, 1:].reshape(-1), ignore_index=-100)
    tensors = {"input_ids": input_ids, "labels": labels, "logits": logits,
               "loss": torch.tensor([float(out.loss)], dtype=torch.float64),
               "ce_loss": torch.tensor([float(ce)], dtype=torch.float64)}
    trainable = 0
    for n, p in pm.named_parameters():
        if p.requires_grad:
            assert "lora_" in n, n
            assert p.grad is not None and float(p.grad.abs().max()) > 0, n
            key = n.replace(PREFIX, "").replace(".default.", ".")
            tensors["grad." + key] = p.grad.detach().clone()
            trainable += 1
        else:
            assert p.grad is None, n
    merged = pm.merge_and_unload()
    sd = merged.state_dict()
    saved_names = load_file(os.path.join(out_dir, "adapter_model.safetensors")).keys()
    modules = sorted({k[len(PREFIX):].rsplit(".lora_", 1)[0] for k in saved_names
                      if ".mlp.experts." not in k})
    for m in modules:
        tensors["merged." + m + ".weight"] = sd[m + ".weight"].detach().clone()
    # The experts' merged stacked weights, by the checkpoint's per-expert names.
    hub = set(load_file(os.path.join(base_dir, "model.safetensors")).keys())
    mixtral = cfg.model_type == "mixtral"
    moe, (g, u, d) = ("block_sparse_moe", ("w1", "w3", "w2")) if mixtral else \
        ("mlp", ("gate_proj", "up_proj", "down_proj"))
    for p in spec.get("params") or []:
        for k in sd:
            if not k.endswith("." + p) or ".mlp.experts." not in k:  # PEFT's match
                continue
            layer = k.split(".")[2]
            w = sd[k].detach()
            if cfg.model_type == "gpt_oss":  # the hub stores them stacked, as merged here
                assert k in hub, k
                tensors["merged." + k] = w.clone()
                modules.append(k)
                continue
            for e in range(w.shape[0]):
                x = f"model.layers.{layer}.{moe}.experts.{e}."
                if p.endswith("gate_up_proj"):
                    half = w.shape[1] // 2
                    parts = {g: w[e, :half], u: w[e, half:]}
                else:
                    parts = {d: w[e]}
                for part, t in parts.items():
                    assert x + part + ".weight" in hub, x + part
                    tensors["merged." + x + part + ".weight"] = t.clone()
                    modules.append(x + part)
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(out_dir, "reference.safetensors"))
    meta = {"base": spec["base"], "seed": spec["seed"], "peft": __import__("peft").__version__,
            "transformers": transformers.__version__, "torch": torch.__version__,
            "adapted_modules": len(modules), "adapter_tensors": trainable,
            "loss": float(out.loss)}
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"{name}: {len(modules)} modules, {trainable} adapter tensors, loss {float(out.loss):.6f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(DATA, "lora"))
    ap.add_argument("--case", action="append")
    args = ap.parse_args()
    torch.manual_seed(0)
    for name, spec in CASES.items():
        if args.case and name not in args.case:
            continue
        build(name, spec, args.out)


if __name__ == "__main__":
    main()
