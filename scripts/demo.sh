#!/usr/bin/env bash
# Builds xtuner.cpp and runs the main job on its bundled default: a small Qwen3-MoE trained from
# random weights on a generated task (reverse a sequence of letters), then scored on 200
# held-out prompts. About a minute of training on 2 cores. Outputs go to work_dirs/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
BUILD_DIR=${BUILD_DIR:-build}
# Ninja for new build directories (one made by make before keeps make).
if [ -z "${CMAKE_GENERATOR:-}" ] && command -v ninja > /dev/null; then export CMAKE_GENERATOR=Ninja; fi
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "${JOBS:-2}" --target xtuner
# --resume auto: a second run continues (or, when finished, re-exports and re-scores) the first.
"$BUILD_DIR/xtuner" train examples/demo.toml --resume auto "$@"
