#!/usr/bin/env bash
# Speed of one fp32 CPU training step (forward + backward + clip + AdamW) of a small Qwen3-MoE
# (hidden 512, 4 layers, 32 experts top-4, vocab 8192; 2048 tokens a step) in the engine
# (cpu_train_bench.cc) against HF transformers + PyTorch (cpu_train_peer.py), on all cores.
# Prints one table, then one summary line:
#   tokens/s engine=X pytorch=Y ratio=X/Y sgemm_fraction=F peak_rss_mib=M
#
#   bench/cpu_train.sh    # BUILD=build-dir STEPS=5 THREADS=$(nproc) VENV=venv-dir to override
#                         # MODEL=deepseek_v3: the same sizes as a DeepSeek-V3 (MLA, sigmoid
#                         # group-limited router, a shared expert, first layer dense);
#                         # MODEL=gpt_oss: as a GPT-OSS (biases, sinks, a 128-token window on
#                         # every other layer, the clamped GLU)
#                         # LORA=16: LoRA of that rank on the attention projections, every other
#                         # weight frozen, on both sides (the peer through PEFT);
#                         # LORA_DROPOUT=0.1: their dropout, on both sides;
#                         # LORA_EXPERTS=1: adapters on the routed experts' gate_up and down
#                         # weights too (PEFT's target_parameters), on both sides
# The peer's venv (default bench/.venv) gets torch 2.11.0 and transformers 5.17.0 from PyPI,
# installed with --no-deps from tools/reference/requirements.txt (plain `pip install torch`
# pulls GBs of CUDA wheels); an existing venv with both (e.g. VENV=/work/venv-ref) is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
STEPS=${STEPS:-5}
THREADS=${THREADS:-$(nproc)}
MODEL=${MODEL:-qwen3_moe}
LORA=${LORA:-0}
LORA_DROPOUT=${LORA_DROPOUT:-0}
LORA_EXPERTS=${LORA_EXPERTS:-0}
source bench/peer_venv.sh
cmake -S . -B "$BUILD" > /dev/null
cmake --build "$BUILD" --target cpu_train_bench -j2 > /dev/null

export OMP_NUM_THREADS=$THREADS
LORA_ARGS=(--lora "$LORA" --lora-dropout "$LORA_DROPOUT")
PEER_LORA_ARGS=("${LORA_ARGS[@]}")
if [ "$LORA_EXPERTS" != 0 ]; then PEER_LORA_ARGS+=(--lora-experts); fi
ENGINE=$("$BUILD/cpu_train_bench" --steps "$STEPS" --tokens 2048 --docs 4 --model "$MODEL" \
  "${LORA_ARGS[@]}" --lora-experts "$LORA_EXPERTS")
ENGINE16=$("$BUILD/cpu_train_bench" --steps "$STEPS" --tokens 2048 --docs 4 --precision bf16 \
  --model "$MODEL" "${LORA_ARGS[@]}" --lora-experts "$LORA_EXPERTS")
PEER=$("$VENV/bin/python" -W ignore bench/cpu_train_peer.py --steps "$STEPS" --threads "$THREADS" \
  --batch 4 --seq 512 --model "$MODEL" "${PEER_LORA_ARGS[@]}")

MODEL="$MODEL" LORA="$LORA" LORA_DROPOUT="$LORA_DROPOUT" LORA_EXPERTS="$LORA_EXPERTS" ENGINE="$ENGINE" ENGINE16="$ENGINE16" PEER="$PEER" "$VENV/bin/python" - <<'PY'
import os

def kv(text):
    return dict(l.split("=", 1) for l in text.splitlines() if "=" in l)

e, p = kv(os.environ["ENGINE"]), kv(os.environ["PEER"])
e16 = kv(os.environ["ENGINE16"])
flops = float(e["step_flops"])  # same model, same tokens, same document lengths on both sides
et, pt = float(e["tokens_per_s"]), float(p["tokens_per_s"])
es, ps = float(e["step_s_median"]), float(p["step_s_median"])
lora = int(os.environ["LORA"])
if lora:
    experts = " and the routed experts" if os.environ["LORA_EXPERTS"] != "0" else ""
    print(f"LoRA rank {lora} (alpha {2 * lora}, dropout {os.environ['LORA_DROPOUT']}) on the "
          f"attention projections{experts}: "
          f"{int(e['trainable_params']) / 1e6:.3f}M trainable parameters; peer: peft "
          f"{p.get('peft', '?')}")
print(f"{os.environ['MODEL']}: threads {e['threads']}, {e['tokens']} tokens a step, "
      f"median of {e['steps']} steps; "
      f"model FLOPs {flops / 1e9:.1f} G a step ({int(e['matmul_params']) / 1e6:.2f}M matmul "
      f"params of {int(e['total_params']) / 1e6:.2f}M); oneDNN sgemm 2048^3 "
      f"{float(e['sgemm_flops_per_s']) / 1e9:.1f} GFLOP/s; torch {p['torch']}, "
      f"transformers {p['transformers']}\n")
print("| implementation | tokens/s | model GFLOP/s | peak RSS MiB | ratio |")
print("|---|---:|---:|---:|---:|")
peer = "PyTorch + transformers" + (" + PEFT" if lora else "")
print(f"| {peer} | {pt:,.1f} | {flops / ps / 1e9:.1f} | "
      f"{float(p['peak_rss_mib']):,.0f} | 1.00x |")
print(f"| xtuner | {et:,.1f} | {flops / es / 1e9:.1f} | {float(e['peak_rss_mib']):,.0f} | "
      f"{et / pt:.2f}x |")
et16, es16 = float(e16["tokens_per_s"]), float(e16["step_s_median"])
print(f"| xtuner, bf16 matmuls | {et16:,.1f} | {flops / es16 / 1e9:.1f} | "
      f"{float(e16['peak_rss_mib']):,.0f} | {et16 / pt:.2f}x |")
print(f"\nbf16 matmuls: oneDNN bf16 gemm 2048^3 {float(e16['bf16_gemm_flops_per_s']) / 1e9:.1f} "
      f"GFLOP/s; step loss {float(e16['loss']):.6f} against fp32's {float(e['loss']):.6f}")
print(f"\ntokens/s engine={et:.1f} pytorch={pt:.1f} ratio={et / pt:.2f} "
      f"sgemm_fraction={float(e['sgemm_fraction']):.3f} peak_rss_mib={float(e['peak_rss_mib']):.0f}")
PY
