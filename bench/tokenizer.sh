#!/usr/bin/env bash
# Single-thread encode speed of xtuner's Tokenizer against HF `tokenizers` on the same inputs:
# a ~4 MB mixed corpus (English, Python code, several scripts, emoji) encoded in one call and as
# ~2 KB documents one call each, with a 32k byte-level BPE (Qwen2 pre-tokenizer) trained on it.
# Prints one table (MB/s, tokens/s, speed-up, whether the ids are identical).
#
#   bench/tokenizer.sh            # BUILD=build-dir WORK=scratch-dir to override
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
WORK=${WORK:-$(mktemp -d /tmp/xt-tokbench.XXXXXX)}
VENV=bench/.venv

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q tokenizers
fi
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$BUILD" --target tokenizer_bench -j2 > /dev/null

[ -f "$WORK/tokenizer.json" ] || "$VENV/bin/python" bench/tokenizer_peer.py prepare "$WORK"
"$BUILD/tokenizer_bench" --tokenizer "$WORK/tokenizer.json" --text "$WORK/text.txt" \
  --docs "$WORK/docs.jsonl" --repeat 3 > "$WORK/engine.jsonl"
RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false \
  "$VENV/bin/python" bench/tokenizer_peer.py run "$WORK" > "$WORK/hf.jsonl"
"$VENV/bin/python" bench/tokenizer_peer.py table "$WORK"
