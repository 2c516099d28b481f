#!/usr/bin/env bash
# Builds xtuner.cpp and runs every test (the README's test command; .ci/run calls it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "${JOBS:-2}"
cd "$BUILD_DIR"
ctest --output-on-failure -j "${JOBS:-2}" --timeout 600
