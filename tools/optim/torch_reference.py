#!/usr/bin/env python3
"""Reference values for xtuner.cpp's optimizer and learning-rate schedules.

Writes two JSON files (numbers printed with repr, so every float round-trips exactly):

  adamw_reference.json   torch.optim.AdamW (single-tensor CPU path, foreach=False) trajectories:
    {"torch": version, "cases": [{"name", "beta1", "beta2", "eps", "weight_decay",
      "n", "ranges": [[offset, numel, weight_decay_enabled], ...],
      "params0": [n], "lrs": [steps], "grads": [steps][n],
      "params": [steps][n] (after each step), "exp_avg": [n], "exp_avg_sq": [n] (final)}]}
    The slab is split into the ranges; ranges with weight decay form one param group with
    weight_decay, the others one with weight_decay = 0. The lr of step s is set on both groups.

  lr_schedules.json      learning rates of whole runs:
    {"transformers": version, "cases": [{"name", "source", "config": {type, lr, min_lr,
      total_steps, warmup_steps, warmup_ratio, warmup_start_factor}, "lrs": [total_steps + 1]}]}
    lrs[s] is the lr of optimizer step s (0-based): the scheduler's get_last_lr() before the
    (s+1)-th optimizer.step(). Cases from transformers' get_*_schedule_with_warmup have source
    "transformers..."; the warm-up start factor and the linear floor have no HF equivalent and
    are evaluated from the documented formula in Python ("formula").

Usage (from the repo root; any venv with torch and transformers, e.g. /work/venv-ref):
  python tools/optim/torch_reference.py --out tests/data/optim
"""

import argparse
import json
import math
import os
from types import SimpleNamespace

import torch
import transformers
from transformers import optimization as hf


def adamw_case(name, seed, n, ranges, steps, lrs, beta1, beta2, eps, wd, grad_scales=None):
    g = torch.Generator().manual_seed(seed)
    params0 = torch.rand(n, generator=g, dtype=torch.float32) * 2 - 1
    grads = []
    for _ in range(steps):
        gr = torch.randn(n, generator=g, dtype=torch.float32)
        if grad_scales is not None:
            gr = gr * torch.tensor(grad_scales, dtype=torch.float32)
        grads.append(gr)

    def run(foreach):
        ps = [torch.nn.Parameter(params0[o:o + k].clone()) for o, k, _ in ranges]
        groups = [
            {"params": [p for p, r in zip(ps, ranges) if r[2]], "weight_decay": wd},
            {"params": [p for p, r in zip(ps, ranges) if not r[2]], "weight_decay": 0.0},
        ]
        groups = [grp for grp in groups if grp["params"]]
        opt = torch.optim.AdamW(groups, lr=lrs[0], betas=(beta1, beta2), eps=eps, foreach=foreach)
        traj = []
        for s in range(steps):
            for p, (o, k, _) in zip(ps, ranges):
                p.grad = grads[s][o:o + k].clone()
            for grp in opt.param_groups:
                grp["lr"] = lrs[s]
            opt.step()
            traj.append(torch.cat([p.detach() for p in ps]))
        m = torch.cat([opt.state[p]["exp_avg"] for p in ps])
        v = torch.cat([opt.state[p]["exp_avg_sq"] for p in ps])
        assert all(int(opt.state[p]["step"]) == steps for p in ps)
        return traj, m, v

    traj, m, v = run(foreach=False)
    traj2, _, _ = run(foreach=True)  # sanity: torch's two CPU paths agree to rounding
    diff = max(float((a - b).abs().max()) for a, b in zip(traj, traj2))
    print(f"adamw {name}: single-tensor vs foreach max |diff| {diff:.3g}")
    assert diff < 1e-5
    return {
        "name": name, "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": wd, "n": n,
        "ranges": [[o, k, bool(d)] for o, k, d in ranges],
        "params0": params0.tolist(), "lrs": lrs, "grads": [x.tolist() for x in grads],
        "params": [x.tolist() for x in traj], "exp_avg": m.tolist(), "exp_avg_sq": v.tolist(),
    }


def make_adamw():
    cases = []
    # torch defaults but for weight decay; four ranges, decay on the first and third; an lr of 0
    # at step 0 (HF warm-up), large lrs so the updates are a visible part of the parameters.
    cases.append(adamw_case("defaults_wd0.1", 1, 40, [(0, 16, 1), (16, 4, 0), (20, 16, 1), (36, 4, 0)],
                            6, [0.0, 0.05, 0.1, 0.1, 0.07, 0.02], 0.9, 0.999, 1e-8, 0.1))
    # Other betas and eps; gradients of 1e-6 on [8, 16) (eps matters) and exactly 0 on [16, 20).
    scales = [1.0] * 8 + [1e-6] * 8 + [0.0] * 4 + [3.0] * 12
    cases.append(adamw_case("betas0.8_0.95_eps1e-6", 2, 32, [(0, 4, 0), (4, 20, 1), (24, 8, 0)],
                            6, [0.01, 0.03, 0.03, 0.03, 0.03, 0.01], 0.8, 0.95, 1e-6, 0.05, scales))
    # No weight decay anywhere (the wd == 0 path), beta1 >= 0.5 lerp branch not taken, one range.
    cases.append(adamw_case("no_decay_beta1_0.3", 3, 24, [(0, 24, 1)], 5,
                            [0.02, 0.02, 0.01, 0.01, 0.005], 0.3, 0.99, 1e-8, 0.0))
    return {"torch": torch.__version__, "cases": cases}


def hf_lrs(make, lr, total):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make(opt)
    out = []
    for _ in range(total + 1):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def formula_lrs(cfg, warmup):
    lr, T, W, f = cfg["lr"], cfg["total_steps"], warmup, cfg["warmup_start_factor"]
    rate = cfg["min_lr"] / lr if lr > 0 else 0.0
    out = []
    for step in range(T + 1):
        if step < W:
            out.append(lr * (f + (1 - f) * (float(step) / float(max(1, W)))))
            continue
        s = min(step, T)
        if cfg["type"] == "constant":
            d = 1.0
        elif cfg["type"] == "cosine":
            d = max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * float(s - W) / float(max(1, T - W)))))
        else:
            d = max(0.0, float(T - s) / float(max(1, T - W)))
        out.append(lr * max(0.0, d * (1 - rate) + rate))
    return out


def make_schedules():
    cases = []

    def add(name, source, cfg, lrs):
        full = {"type": "cosine", "lr": 1e-3, "min_lr": 0.0, "total_steps": 0, "warmup_steps": 0,
                "warmup_ratio": 0.0, "warmup_start_factor": 0.0}
        full.update(cfg)
        assert len(lrs) == full["total_steps"] + 1
        cases.append({"name": name, "source": source, "config": full, "lrs": lrs})

    for W, T in [(10, 100), (0, 37), (1, 2), (25, 25), (3, 1000)]:
        add(f"cosine_w{W}_t{T}", "transformers.get_cosine_schedule_with_warmup",
            {"type": "cosine", "lr": 3e-4, "total_steps": T, "warmup_steps": W},
            hf_lrs(lambda o: hf.get_cosine_schedule_with_warmup(o, W, T), 3e-4, T))
    for W, T, lr, mn in [(5, 50, 6e-4, 1e-5), (0, 17, 8e-4, 2e-4)]:
        add(f"cosine_min_lr_w{W}_t{T}", "transformers.get_cosine_with_min_lr_schedule_with_warmup",
            {"type": "cosine", "lr": lr, "min_lr": mn, "total_steps": T, "warmup_steps": W},
            hf_lrs(lambda o: hf.get_cosine_with_min_lr_schedule_with_warmup(o, W, T, min_lr=mn),
                   lr, T))
    for W, T in [(7, 60), (0, 1), (0, 13), (9, 9)]:
        add(f"linear_w{W}_t{T}", "transformers.get_linear_schedule_with_warmup",
            {"type": "linear", "lr": 1e-3, "total_steps": T, "warmup_steps": W},
            hf_lrs(lambda o: hf.get_linear_schedule_with_warmup(o, W, T), 1e-3, T))
    for W, T in [(12, 30), (0, 5)]:
        add(f"constant_w{W}_t{T}", "transformers.get_constant_schedule_with_warmup",
            {"type": "constant", "lr": 5e-5, "total_steps": T, "warmup_steps": W},
            hf_lrs(lambda o: hf.get_constant_schedule_with_warmup(o, W), 5e-5, T))
    # Warm-up ratio, resolved by HF's TrainingArguments.get_warmup_steps (0.07 * 100 is
    # 7.000000000000001 in double: 8 steps), called on a stand-in: building a TrainingArguments
    # needs accelerate.
    for ratio, T in [(0.07, 100), (0.1, 55), (0.03, 10)]:
        W = transformers.TrainingArguments.get_warmup_steps(SimpleNamespace(warmup_steps=ratio), T)
        add(f"cosine_ratio{ratio}_t{T}", "transformers.TrainingArguments.get_warmup_steps + "
            "get_cosine_schedule_with_warmup",
            {"type": "cosine", "lr": 1e-4, "total_steps": T, "warmup_ratio": ratio},
            hf_lrs(lambda o: hf.get_cosine_schedule_with_warmup(o, W, T), 1e-4, T))
    # No HF equivalent: the documented formulas.
    for cfg in [{"type": "cosine", "lr": 1e-3, "min_lr": 1e-4, "total_steps": 40, "warmup_steps": 8,
                 "warmup_start_factor": 0.1},
                {"type": "linear", "lr": 2e-3, "min_lr": 2e-4, "total_steps": 30, "warmup_steps": 4},
                {"type": "constant", "lr": 1e-3, "total_steps": 12, "warmup_steps": 5,
                 "warmup_start_factor": 0.5}]:
        full = {"min_lr": 0.0, "warmup_start_factor": 0.0}
        full.update(cfg)
        add(f"formula_{cfg['type']}", "formula", cfg, formula_lrs(full, cfg["warmup_steps"]))
    return {"transformers": transformers.__version__, "cases": cases}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/data/optim")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for fname, data in [("adamw_reference.json", make_adamw()), ("lr_schedules.json", make_schedules())]:
        path = os.path.join(a.out, fname)
        with open(path, "w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.write("\n")
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
