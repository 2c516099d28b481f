#!/usr/bin/env python3
"""Independent check of fixture dirs (shared/fixtures/* or tests/data/variants/*).

A from-scratch float64 PyTorch implementation of Qwen3 / Qwen3-MoE / Mixtral / DeepSeek-V3 that uses only
config.json (v4 or v5 spellings) and the hub-named safetensors (single file or sharded, float32
or bf16, or block-quantized FP8 dequantized as DeepSeek's weight_dequant does), i.e. what a C++
engine sees; no transformers. It recomputes logits, hidden states,
router logits, ce/aux/loss, all gradients (autograd) and the packed logits (one packed row with a
block-diagonal causal mask and restarting positions) and prints the max abs/rel differences
against reference.safetensors. It computes everything in true float64 (transformers rounds
RMSNorm, the eager attention softmax, RoPE cos/sin and the router softmax through float32), so
differences of ~1e-6 are expected; anything >= --tol fails.

DeepSeek-V3 (MLA attention with or without q LoRA, interleaved or half-split RoPE on the
qk_rope_head_dim part, sigmoid router with e_score_correction_bias and group-limited top-k,
shared experts, first_k_dense_replace dense layers, loss = ce): the reference has no aux_loss and
no router_logits, and its grad of e_score_correction_bias (a buffer) must be all zeros. The
router's float64 margins (last kept vs first dropped group, k-th vs (k+1)-th masked choice) are
printed for information.

RoPE: plain, or YaRN ("rope_type"/"type": "yarn" in rope_parameters or a v4 rope_scaling), written
out in float64 after DeepSeek-V3's own precompute_freqs_cis / yarn_get_mscale: frequency i of a
rotary width dim is theta^(-2i/dim) * (w_i + (1 - w_i)/factor), where w_i = 1 - clamp((i - low) /
(high - low), 0, 1), low/high = floor/ceil (not rounded if truncate is false) of the rotary dim
dim*ln(orig/(2*pi*beta))/(2*ln(theta)) for beta_fast and beta_slow (clamped to [0, dim-1]); cos
and sin are multiplied by attention_factor (given, else mscale(factor, mscale)/mscale(factor,
mscale_all_dim) if both are set, else mscale(factor)), mscale(s, m) = 0.1*m*ln(s) + 1 (1 if s <= 1);
DeepSeek-V3 also multiplies its softmax scale by mscale(factor, mscale_all_dim)^2 when
mscale_all_dim is set. If meta.json has "rope_inv_freq", it is compared with these frequencies.

Usage: python tools/reference/check_reference.py DIR [DIR ...] [--tol 1e-4] [--write-exact NAMES]

--write-exact NAMES (comma-separated hub tensor names) also writes DIR/exact.safetensors with the
true float64 gradients `grad.<name>` of those tensors: for gradients that transformers' float32
roundings make inexact (e.g. Mixtral's top-1 router, whose renormalised weight is exactly 1, so
its CE gradient is round-off only), the engine's tests compare against these instead.
"""

import argparse
import glob
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def fp8_dequantize(codes, scale, block):
    """DeepSeek's weight_dequant: W[r][c] = fp32(code) * scale[r // br][c // bc], the last block of
    a row or column possibly partial (ceil-sized scale grid), one float32 rounding."""
    (r, c), (br, bc) = codes.shape, block
    assert scale.shape == ((r + br - 1) // br, (c + bc - 1) // bc), (codes.shape, scale.shape, block)
    s = scale.float().repeat_interleave(br, 0)[:r].repeat_interleave(bc, 1)[:, :c]
    return codes.to(torch.float32) * s


def load_weights(d):
    w = {}
    for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        if os.path.basename(f) not in ("reference.safetensors", "exact.safetensors"):
            w.update(load_file(f))
    # FP8 block-quantized weights (quantization_config quant_method "fp8"): dequantize
    q = json.load(open(os.path.join(d, "config.json"))).get("quantization_config")
    if q is not None:
        assert q["quant_method"] == "fp8" and q.get("fmt", "e4m3") == "e4m3", q
        block = q.get("weight_block_size", [128, 128])
        for k in [k for k in w if w[k].dtype == torch.float8_e4m3fn]:
            w[k] = fp8_dequantize(w[k], w.pop(k + "_scale_inv"), block)
    assert not [k for k in w if w[k].dtype == torch.float8_e4m3fn or k.endswith("_scale_inv")]
    return {k: v.to(torch.float64).requires_grad_(True) for k, v in w.items()}


def parse_config(c):
    mt = c["model_type"]
    H = c["hidden_size"]
    nh = c["num_attention_heads"]
    rope = dict(c.get("rope_scaling") or {})  # transformers-4 spelling (rope_theta top-level)
    rope.update(c.get("rope_parameters") or {})  # transformers-5 spelling
    theta = rope.get("rope_theta", c.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    assert rope_type in ("default", "yarn"), f"RoPE type {rope_type} not implemented here"
    if rope_type == "yarn":
        rope = dict(rope, factor=rope.get("factor") or c["max_position_embeddings"] / rope["original_max_position_embeddings"])
    E = c.get("num_local_experts", c.get("num_experts", 0)) if mt != "qwen3" else 0
    L = c["num_hidden_layers"]
    ds = {}
    if mt == "deepseek_v3":
        E = c["n_routed_experts"]
        moe = list(range(c["first_k_dense_replace"], L))
        ds = dict(
            q_lora=c.get("q_lora_rank"), kv_lora=c["kv_lora_rank"], nope=c["qk_nope_head_dim"],
            rot=c["qk_rope_head_dim"], vd=c["v_head_dim"], interleave=c.get("rope_interleave", True),
            n_group=c["n_group"], topk_group=c["topk_group"], rsf=c["routed_scaling_factor"],
        )
    elif mt == "qwen3_moe":
        mlp_only = c.get("mlp_only_layers") or []
        step = c.get("decoder_sparse_step", 1)
        moe = [i for i in range(L) if i not in mlp_only and E > 0 and (i + 1) % step == 0]
    elif mt == "mixtral":
        moe = list(range(L))
    else:
        moe = []
    return dict(
        mt=mt, H=H, nh=nh, nkv=c["num_key_value_heads"], hd=c.get("head_dim") or H // nh, L=L,
        eps=c["rms_norm_eps"], theta=float(theta), E=E, k=c.get("num_experts_per_tok", 0),
        norm_topk=(c.get("norm_topk_prob", False) if mt == "qwen3_moe" else c.get("norm_topk_prob", True)),
        coef=c.get("router_aux_loss_coef", 0.0), tied=c.get("tie_word_embeddings", False),
        V=c["vocab_size"], moe=moe, qk_norm=mt in ("qwen3", "qwen3_moe"), ds=ds,
        rope_type=rope_type, rope=rope,
    )


def mscale(s, m=1.0):
    return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0


def rope_freqs(p, dim):
    """(inv_freq [dim/2] float64, cos/sin factor, (low, high) or None) for a rotary width dim."""
    theta = p["theta"]
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    if p["rope_type"] == "default":
        return inv, 1.0, None
    r = p["rope"]
    orig, factor = r["original_max_position_embeddings"], r["factor"]

    def corr_dim(beta):  # rotary dim whose frequency makes beta turns over the original context
        return dim * math.log(orig / (2 * math.pi * beta)) / (2 * math.log(theta))

    low, high = corr_dim(r.get("beta_fast") or 32), corr_dim(r.get("beta_slow") or 1)
    if r.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    w = 1.0 - ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0.0, 1.0)
    inv = inv * w + inv / factor * (1.0 - w)
    if r.get("attention_factor") is not None:
        af = r["attention_factor"]
    elif r.get("mscale") and r.get("mscale_all_dim"):
        af = mscale(factor, r["mscale"]) / mscale(factor, r["mscale_all_dim"])
    else:
        af = mscale(factor)
    return inv, af, (low, high)


def softmax_scale(p):
    if p["mt"] != "deepseek_v3":
        return p["hd"] ** -0.5
    d = p["ds"]
    scale = (d["nope"] + d["rot"]) ** -0.5
    if p["rope_type"] != "default" and p["rope"].get("mscale_all_dim"):  # transformers' yarn_apply_mscale
        scale = scale * mscale(p["rope"]["factor"], p["rope"]["mscale_all_dim"]) ** 2
    return scale


def rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(x, pos, p):  # x [B, h, S, hd], pos [B, S]; rotate_half convention
    hd = x.shape[-1]
    inv, af, _ = rope_freqs(p, hd)
    ang = pos[:, None, :, None].double() * inv  # [B,1,S,hd/2]
    cos, sin = torch.cat([ang.cos()] * 2, -1) * af, torch.cat([ang.sin()] * 2, -1) * af
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def rope_pairs(x, pos, p):  # DeepSeek rope_interleave: rotate the pairs (x0,x1), (x2,x3), ... in place
    hd = x.shape[-1]
    inv, af, _ = rope_freqs(p, hd)
    ang = pos[:, None, :, None].double() * inv  # [B,1,S,hd/2]
    cos, sin = ang.cos() * af, ang.sin() * af
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], -1).flatten(-2)


def mla(w, p, pre, h, pos, mask):
    """DeepSeek-V3 multi-head latent attention, written out (no latent-cache tricks)."""
    d, B, S = p["ds"], h.shape[0], h.shape[1]
    a = pre + "self_attn."
    if d["q_lora"] is None:
        q = h @ w[a + "q_proj.weight"].T
    else:  # the latent norms use eps 1e-6 in transformers (and DeepSeek's code), not rms_norm_eps
        q = rms(h @ w[a + "q_a_proj.weight"].T, w[a + "q_a_layernorm.weight"], 1e-6) @ w[a + "q_b_proj.weight"].T
    q = q.view(B, S, p["nh"], d["nope"] + d["rot"]).transpose(1, 2)
    q_nope, q_rot = q[..., : d["nope"]], q[..., d["nope"]:]
    ckv = h @ w[a + "kv_a_proj_with_mqa.weight"].T
    lat, k_rot = ckv[..., : d["kv_lora"]], ckv[..., d["kv_lora"]:]
    kv = rms(lat, w[a + "kv_a_layernorm.weight"], 1e-6) @ w[a + "kv_b_proj.weight"].T
    kv = kv.view(B, S, p["nh"], d["nope"] + d["vd"]).transpose(1, 2)
    k_nope, v = kv[..., : d["nope"]], kv[..., d["nope"]:]
    rot = rope_pairs if d["interleave"] else rope
    q_rot, k_rot = rot(q_rot, pos, p), rot(k_rot[:, None], pos, p)  # k_rot: one head
    s = (q_nope @ k_nope.transpose(-1, -2) + q_rot @ k_rot.transpose(-1, -2)) * softmax_scale(p)
    s = s.masked_fill(~mask[:, None], float("-inf"))
    o = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, S, -1)
    return o @ w[a + "o_proj.weight"].T


def ds_route(p, lg, bias):
    """Sigmoid scores, choice = scores + bias, groups by the sum of their 2 best choices, keep
    topk_group groups, top-k of the kept experts; weights = scores (no bias), optionally
    renormalised, times routed_scaling_factor. Returns (weights, ids, group margin, choice margin)."""
    d = p["ds"]
    T, E = lg.shape
    scores = torch.sigmoid(lg)
    choice = scores.detach() + bias.detach()
    gsz = E // d["n_group"]
    gs = choice.view(T, d["n_group"], gsz).topk(2, -1).values.sum(-1).sort(-1, descending=True)
    ggap = (gs.values[:, d["topk_group"] - 1] - gs.values[:, d["topk_group"]]).min() \
        if d["topk_group"] < d["n_group"] else None
    keep = torch.zeros(T, d["n_group"], dtype=torch.bool).scatter(1, gs.indices[:, : d["topk_group"]], True)
    masked = choice.masked_fill(~keep.repeat_interleave(gsz, 1), float("-inf"))
    cs = masked.sort(-1, descending=True)
    cgap = (cs.values[:, p["k"] - 1] - cs.values[:, p["k"]]).min() if p["k"] < d["topk_group"] * gsz else None
    idx = cs.indices[:, : p["k"]]
    wts = scores.gather(1, idx)
    if p["norm_topk"]:
        wts = wts / (wts.sum(-1, keepdim=True) + 1e-20)
    return wts * d["rsf"], idx, ggap, cgap


def forward(w, p, ids, pos, mask):
    """ids [B,S]; pos [B,S]; mask [B,S,S] bool (True = may attend). Returns logits, hs, router."""
    B, S = ids.shape
    x = w["model.embed_tokens.weight"][ids]
    hs, router = [x], {}
    margins = []
    for i in range(p["L"]):
        pre = f"model.layers.{i}."
        h = rms(x, w[pre + "input_layernorm.weight"], p["eps"])
        if p["mt"] == "deepseek_v3":
            x = x + mla(w, p, pre, h, pos, mask)
            h = rms(x, w[pre + "post_attention_layernorm.weight"], p["eps"])
            mp = pre + "mlp."
            if i in p["moe"]:
                t = h.reshape(-1, p["H"])
                wts, idx, gg, cg = ds_route(p, t @ w[mp + "gate.weight"].T, w[mp + "gate.e_score_correction_bias"])
                margins.append((gg, cg))
                out = torch.zeros_like(t)
                for e in range(p["E"]):
                    ex = lambda n: w[f"{mp}experts.{e}.{n}.weight"]  # noqa: E731
                    y = (F.silu(t @ ex("gate_proj").T) * (t @ ex("up_proj").T)) @ ex("down_proj").T
                    out = out + (wts * (idx == e)).sum(-1, keepdim=True) * y
                sh = lambda n: w[f"{mp}shared_experts.{n}.weight"]  # noqa: E731
                out = out + (F.silu(t @ sh("gate_proj").T) * (t @ sh("up_proj").T)) @ sh("down_proj").T
                x = x + out.view(B, S, -1)
            else:
                x = x + (F.silu(h @ w[mp + "gate_proj.weight"].T) * (h @ w[mp + "up_proj.weight"].T)) \
                    @ w[mp + "down_proj.weight"].T
            hs.append(x)
            continue
        q = (h @ w[pre + "self_attn.q_proj.weight"].T).view(B, S, p["nh"], p["hd"])
        k = (h @ w[pre + "self_attn.k_proj.weight"].T).view(B, S, p["nkv"], p["hd"])
        v = (h @ w[pre + "self_attn.v_proj.weight"].T).view(B, S, p["nkv"], p["hd"])
        if p["qk_norm"]:  # per head over head_dim, before RoPE
            q = rms(q, w[pre + "self_attn.q_norm.weight"], p["eps"])
            k = rms(k, w[pre + "self_attn.k_norm.weight"], p["eps"])
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = rope(q, pos, p), rope(k, pos, p)
        rep = p["nh"] // p["nkv"]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = (q @ k.transpose(-1, -2)) * softmax_scale(p)
        s = s.masked_fill(~mask[:, None], float("-inf"))
        a = torch.softmax(s, -1) @ v
        x = x + a.transpose(1, 2).reshape(B, S, -1) @ w[pre + "self_attn.o_proj.weight"].T
        h = rms(x, w[pre + "post_attention_layernorm.weight"], p["eps"])
        if i in p["moe"]:
            mix = p["mt"] == "mixtral"
            mp = pre + ("block_sparse_moe." if mix else "mlp.")
            t = h.reshape(-1, p["H"])
            lg = t @ w[mp + "gate.weight"].T
            router[i] = lg
            probs = torch.softmax(lg, -1)
            top, idx = torch.topk(probs, p["k"], -1)
            if p["norm_topk"]:
                top = top / top.sum(-1, keepdim=True)
            out = torch.zeros_like(t)
            for e in range(p["E"]):
                g_, u_, d_ = (("w1", "w3", "w2") if mix else ("gate_proj", "up_proj", "down_proj"))
                ex = lambda n: w[f"{mp}experts.{e}.{n}.weight"]  # noqa: E731
                y = (F.silu(t @ ex(g_).T) * (t @ ex(u_).T)) @ ex(d_).T
                wt = (top * (idx == e)).sum(-1, keepdim=True)
                out = out + wt * y
            x = x + out.view(B, S, -1)
        else:
            mp = pre + "mlp."
            x = x + (F.silu(h @ w[mp + "gate_proj.weight"].T) * (h @ w[mp + "up_proj.weight"].T)) \
                @ w[mp + "down_proj.weight"].T
        hs.append(x)
    x = rms(x, w["model.norm.weight"], p["eps"])
    hs[-1] = x  # transformers' last hidden state is after the final norm
    head = w["model.embed_tokens.weight"] if p["tied"] else w["lm_head.weight"]
    forward.margins = margins
    return x @ head.T, hs, router


def aux_loss(router, E, k):
    f = torch.zeros(E, dtype=torch.float64)
    pr = torch.zeros(E, dtype=torch.float64)
    n = 0
    for lg in router.values():
        probs = torch.softmax(lg, -1)
        f = f + torch.bincount(torch.topk(probs, k, -1).indices.reshape(-1), minlength=E).double()
        pr = pr + probs.sum(0)
        n += lg.shape[0]
    return E * torch.sum((f / n) * (pr / n))


def check(d, tol, exact_names=()):
    c = json.load(open(os.path.join(d, "config.json")))
    p = parse_config(c)
    w = load_weights(d)
    r = load_file(os.path.join(d, "reference.safetensors"))
    ids, labels = r["input_ids"], r["labels"]
    B, S = ids.shape
    causal = torch.ones(S, S, dtype=torch.bool).tril()[None].expand(B, S, S)
    pos = torch.arange(S)[None].expand(B, S)
    logits, hs, router = forward(w, p, ids, pos, causal)
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, p["V"]), labels[:, 1:].reshape(-1), ignore_index=-100)
    loss = ce
    res = {}
    margins = list(forward.margins)
    if p["mt"] == "deepseek_v3":
        bad = [k for k in r if k == "aux_loss" or k.startswith("router_logits.")]
        assert not bad, f"DeepSeek-V3 reference should have no aux/router entries: {bad}"
    elif p["moe"]:
        aux = aux_loss(router, p["E"], p["k"])
        loss = ce + p["coef"] * aux
        res["aux_loss"] = abs(float(aux.detach()) - float(r["aux_loss"]))
        for i, lg in router.items():
            res[f"router_logits.{i}"] = float((lg.detach() - r[f"router_logits.{i}"]).abs().max())
        extra = sorted(k for k in r if k.startswith("router_logits.") and int(k.split(".")[1]) not in router)
        assert not extra, f"reference has router logits for non-MoE layers {extra}"
    loss.backward()
    res["ce_loss"] = abs(float(ce.detach()) - float(r["ce_loss"]))
    res["loss"] = abs(float(loss.detach()) - float(r["loss"]))
    res["logits"] = float((logits.detach() - r["logits"]).abs().max())
    for i, h in enumerate(hs):
        res[f"hidden_states.{i}"] = float((h.detach() - r[f"hidden_states.{i}"]).abs().max())
    gkeys = {k[5:] for k in r if k.startswith("grad.")}
    assert gkeys == set(w), f"grad names != weight names: {gkeys ^ set(w)}"
    gmax = 0.0
    for k, t in w.items():
        ref = r["grad." + k]
        if k.endswith("e_score_correction_bias"):  # a buffer: the reference writes zeros
            assert t.grad is None and not ref.any(), k
            continue
        scale = max(float(ref.abs().max()), 1e-3)
        gmax = max(gmax, float((t.grad - ref).abs().max()) / scale)
    res["grads (max abs diff / max |grad|)"] = gmax
    if exact_names:
        from safetensors.torch import save_file
        save_file({"grad." + k: w[k].grad.detach().clone() for k in exact_names},
                  os.path.join(d, "exact.safetensors"))
    # packed: one row, block-diagonal causal mask, positions restart per document
    pid, cu = r["packed.input_ids"], r["packed.cu_seqlens"].tolist()
    N = pid.shape[1]
    doc = torch.zeros(N, dtype=torch.long)
    for j in range(len(cu) - 1):
        doc[cu[j]:cu[j + 1]] = j
    m = (doc[:, None] == doc[None, :]) & torch.ones(N, N, dtype=torch.bool).tril()
    ppos = torch.cat([torch.arange(cu[j + 1] - cu[j]) for j in range(len(cu) - 1)])[None]
    assert torch.equal(ppos, r["packed.position_ids"]), "packed.position_ids"
    with torch.no_grad():
        plog, _, _ = forward(w, p, pid, ppos, m[None])
    margins += forward.margins  # (the packed row: the router sees each token once, as per document)
    res["packed.logits"] = float((plog - r["packed.logits"]).abs().max())
    rope_dim = p["ds"]["rot"] if p["mt"] == "deepseek_v3" else p["hd"]
    inv, af, lh = rope_freqs(p, rope_dim)
    meta_path = os.path.join(d, "meta.json")
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    if "rope_inv_freq" in meta:  # (transformers computes the frequencies in float32)
        res["meta rope_inv_freq (rel)"] = float(((torch.tensor(meta["rope_inv_freq"], dtype=torch.float64) - inv)
                                                 / inv).abs().max())
    bad = {k: v for k, v in res.items() if not v < tol}
    print(f"== {d}: moe layers {p['moe']}, {'FAIL' if bad else 'ok'}")
    for k, v in res.items():
        print(f"   {k:40s} {v:.3g}")
    if p["rope_type"] != "default":
        print(f"   ({p['rope_type']} RoPE over {rope_dim} dims: correction range {lh}, cos/sin factor {af:.9g}, "
              f"softmax scale {softmax_scale(p):.9g}, frequency / plain = "
              f"{[round(float(x), 6) for x in inv / rope_freqs(dict(p, rope_type='default'), rope_dim)[0]]})")
    if p["mt"] == "deepseek_v3" and margins:
        def mn(vals):
            vals = [float(v) for v in vals if v is not None]
            return f"{min(vals):.3g}" if vals else "n/a"
        print(f"   (float64 router margins: group {mn(g for g, _ in margins)}, choice {mn(c for _, c in margins)})")
    return not bad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--write-exact", default="")
    a = ap.parse_args()
    names = [n for n in a.write_exact.split(",") if n]
    dirs = [d for d in a.dirs if os.path.isdir(d)]  # (a glob like variants/* also matches README.md)
    for d in sorted(set(a.dirs) - set(dirs)):
        print(f"-- skipping {d}: not a directory")
    ok = all([check(d, a.tol, names) for d in dirs])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
