#!/usr/bin/env bash
# Builds xtuner.cpp and runs the main job on its bundled default: until training lands, that is
# `xtuner debug-dump` on the bundled Qwen3-MoE checkpoint (forward + backward of one batch).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "${JOBS:-2}" --target xtuner
MODEL=${MODEL:-tests/data/qwen3_moe_tiny}
OUT=${OUT:-$BUILD_DIR/debug_dump.safetensors}
"$BUILD_DIR/xtuner" debug-dump --model "$MODEL" --batch "$MODEL/reference.safetensors" --out "$OUT"
