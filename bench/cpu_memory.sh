#!/usr/bin/env bash
# Peak memory of one fp32 training step against sequence length: the bench/cpu_train.sh model
# (Qwen3-MoE, hidden 512, 4 layers, 32 experts top-4, vocab 8192) on one packed row of 1k, 4k,
# 16k and 32k tokens (documents of 1024 tokens), with every layer recomputed and without. Each
# length runs in its own process (peak RSS is a high-water mark). Prints one table: peak RSS,
# the activations kept for the backward (what the engine measures), and their growth per token.
#
#   bench/cpu_memory.sh    # BUILD=build-dir LENGTHS="1024 4096 16384 32768" to override
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
LENGTHS=${LENGTHS:-1024 4096 16384 32768}
cmake -S . -B "$BUILD" > /dev/null
cmake --build "$BUILD" --target cpu_train_bench -j2 > /dev/null

echo "| tokens | recompute | peak RSS MiB | activations MiB | activations KiB/token | tokens/s |"
echo "|---:|---|---:|---:|---:|---:|"
for rc in 1 0; do
  for t in $LENGTHS; do
    out=$("$BUILD/cpu_train_bench" --steps 1 --tokens "$t" --docs $((t / 1024)) --recompute "$rc")
    get() { echo "$out" | sed -n "s/^$1=//p"; }
    awk -v t="$t" -v rc="$rc" -v rss="$(get peak_rss_mib)" -v act="$(get activation_mib)" \
      -v tps="$(get tokens_per_s)" 'BEGIN {
        printf "| %d | %s | %.0f | %.1f | %.1f | %.0f |\n", t, (rc == 1 ? "all layers" : "none"),
               rss, act, act * 1024 / t, tps }'
  done
done
