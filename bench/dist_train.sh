#!/usr/bin/env bash
# Memory and speed per rank of distributed training (ZeRO-3, expert parallelism) on 1, 2 and 4
# ranks under mpirun, against PyTorch FSDP2 (gloo, CPU) on the same Qwen3-MoE (hidden 512,
# 4 layers, 32 experts top-4, vocab 3008: the demo tokenizer's), one row of 512 tokens per rank
# a step, one OpenMP thread per rank. Prints one table: per-rank state (fp32 params + grads +
# AdamW), the engine's gathered-unit buffers, peak RSS (the largest rank), tokens/s, and the
# ratios: speed xtuner / FSDP2, peak RSS FSDP2 / xtuner (both > 1 when xtuner is ahead).
#
#   bench/dist_train.sh    # BUILD=build-dir STEPS=4 VENV=venv-dir to override
# The peer's venv (default bench/.venv) gets torch and transformers as bench/cpu_train.sh does;
# an existing venv with both (e.g. VENV=/work/venv-ref) is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
STEPS=${STEPS:-4}
source bench/dist_common.sh
qwen3_moe_config "$OUT/config.json" 512 1024 256 4 8 4 64 32 4
ROWS=""
for mesh in 1:1 2:1 2:2 4:1 4:4; do
  np=${mesh%:*}
  ep=${mesh#*:}
  dir="$OUT/run-$np-$ep"
  mpirun --oversubscribe -x OMP_NUM_THREADS -np "$np" "$BUILD/xtuner" train examples/demo.toml \
    --set work_dir="$dir" --set model.model_config="$OUT/config.json" --set data.max_length=512 \
    --set train.global_batch_size="$np" --set train.micro_batch_size=1 --set train.steps="$STEPS" \
    --set schedule.warmup_steps=1 --set eval.file= --set export.at_end=false \
    --set parallel.ep="$ep" > "$dir.log" 2>&1
  peer="-"
  if [ "$ep" = 1 ]; then
    peer=$("$VENV/bin/torchrun" --standalone --nproc_per_node "$np" bench/dist_peer.py \
      --config "$OUT/config.json" --seq 512 --rows-per-rank 1 --steps "$STEPS" 2> "$dir.peer.log" |
      tr '\n' ' ')
  fi
  ROWS+="$np $ep $dir|$peer"$'\n'
done

ROWS="$ROWS" "$VENV/bin/python" - <<'PY'
import json, os, re, statistics

def mib(text, key):
    m = re.search(re.escape(key) + r"\s*([0-9.]+) (KiB|MiB|GiB)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[m.group(2)]

print("| ranks | mesh | xtuner state/rank MiB | gathered MiB | peak RSS MiB | tokens/s "
      "| FSDP2 state/rank MiB | FSDP2 peak RSS MiB | FSDP2 tokens/s | speed ratio | RSS ratio |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for line in os.environ["ROWS"].strip().splitlines():
    head, peer = line.split("|", 1)
    np_, ep, d = head.split()
    log = open(d + ".log").read()
    steps = [json.loads(l) for l in open(d + "/metrics.jsonl")]
    tps = statistics.median(s["tokens_per_s"] for s in steps[1:])
    rss = max(s["peak_memory_bytes"] for s in steps) / 2**20
    state = mib(log, "per rank")
    gathered = mib(log, "gradient buffers (ZeRO-3):") if int(np_) > 1 else 0.0
    p = dict(kv.split("=", 1) for kv in peer.split() if "=" in kv)
    if p:
        ps = float(p["state_bytes_per_rank"]) / 2**20
        prss, ptps = float(p["peak_rss_mib"]), float(p["tokens_per_s"])
        cells = f"{ps:,.1f} | {prss:,.0f} | {ptps:,.0f} | {tps / ptps:.2f}x | {prss / rss:.2f}x"
    else:
        cells = "- | - | - | - | -"
    print(f"| {np_} | dp {int(np_) // int(ep)} x ep {ep} | {state:,.1f} | {gathered:,.1f} | "
          f"{rss:,.0f} | {tps:,.0f} | {cells} |")
PY
