#!/usr/bin/env bash
# Memory of the Hugging Face export at the end of a distributed run (rank 0 writes it), on 1, 2
# and 4 ranks under mpirun, against PyTorch FSDP2's way (gloo, CPU; bench/dist_peer.py --export:
# get_model_state_dict(full_state_dict=True, cpu_offload=True), then save_pretrained on rank 0),
# on the same Qwen3-MoE of 232M parameters (hidden 1024, 8 layers, 16 experts top-2, untied
# vocab 3008), 2 steps of one 64-token row per rank, then an fp32 export in shards of SHARD_MB
# MiB (default 200: a model many shards large, as a real one is in 5 GB shards; FSDP2 gathers
# the whole model all the same, xtuner a unit and a shard).
# Prints one table: rank 0's peak RSS without the export and with it, what the export adds, its
# seconds, each side's, and the ratio of the peaks with the export (FSDP2 / xtuner). xtuner's
# peak without the export comes from a second run that skips it; FSDP2's from ru_maxrss before
# it.
#
#   bench/dist_export.sh    # BUILD=build-dir VENV=venv-dir RANKS="1 2 4" SHARD_MB=200
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
RANKS=${RANKS:-"1 2 4"}
SHARD_MB=${SHARD_MB:-200}
source bench/dist_common.sh
qwen3_moe_config "$OUT/config.json" 1024 2048 512 8 8 4 128 16 2
ROWS=""
for np in $RANKS; do
  for export in false true; do
    dir="$OUT/run-$np-$export"
    # Each rank's peak RSS (KiB) and the run's seconds, from GNU time.
    mpirun --oversubscribe -x OMP_NUM_THREADS -np "$np" bash -c "/usr/bin/time -f \
      \"rank \$OMPI_COMM_WORLD_RANK rss_kib %M\" '$BUILD/xtuner' train examples/demo.toml \
      --set work_dir='$dir' --set model.model_config='$OUT/config.json' \
      --set data.max_length=64 --set train.global_batch_size=$np --set train.micro_batch_size=1 \
      --set train.steps=2 --set schedule.warmup_steps=0 --set eval.file= \
      --set export.at_end=$export --set export.dtype=fp32 --set export.shard_mb=$SHARD_MB \
      --set log.every=1" > "$dir.log" 2>&1
  done
  peer=$("$VENV/bin/torchrun" --standalone --nproc_per_node "$np" bench/dist_peer.py \
    --config "$OUT/config.json" --seq 64 --rows-per-rank 1 --steps 2 --export "$OUT/peer-$np" \
    --max-shard-size $((SHARD_MB << 20)) 2> "$OUT/peer-$np.log" | tr '\n' ' ') ||
    { tail -5 "$OUT/peer-$np.log" >&2; exit 1; }
  ROWS+="$np $OUT/run-$np|$peer"$'\n'
done

ROWS="$ROWS" "$VENV/bin/python" - <<'PY'
import os, re

def export_s(log):
    m = re.search(r"exported the model to \S+ \(([0-9.]+) s\)", open(log).read())
    return m.group(1) if m else "-"

def rank0_mib(log):
    m = re.search(r"rank 0 rss_kib (\d+)", open(log).read())
    return int(m.group(1)) / 1024 if m else float("nan")

print("| ranks | xtuner rank 0 peak MiB: no export | with export | export adds "
      "| xtuner export s | FSDP2 rank 0 peak MiB: before export | after | export adds "
      "| FSDP2 export s "
      "| peak ratio FSDP2 / xtuner |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for line in os.environ["ROWS"].strip().splitlines():
    head, peer = line.split("|", 1)
    np_, base = head.split()
    without, with_ = rank0_mib(base + "-false.log"), rank0_mib(base + "-true.log")
    p = dict(kv.split("=", 1) for kv in peer.split() if "=" in kv)
    before = float(p.get("rank0_rss_before_export_mib", "nan"))
    after = float(p.get("rank0_rss_after_export_mib", "nan"))
    added, padded = with_ - without, after - before
    print(f"| {np_} | {without:,.0f} | {with_:,.0f} | {added:,.0f} | {export_s(base + '-true.log')} "
          f"| {before:,.0f} | {after:,.0f} "
          f"| {padded:,.0f} | {p.get('export_s', '-')} | {after / with_:.2f}x |")
PY
