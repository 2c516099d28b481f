#!/usr/bin/env bash
# Builds xtuner.cpp and runs every test (the README's test command; .ci/run calls it), then the
# CUDA tests on the CPU emulator (scripts/test-cuda-emu.sh) where CUDA's headers are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "${JOBS:-2}"
(cd "$BUILD_DIR" && ctest --output-on-failure -j "${JOBS:-2}" --timeout 600)
# The CUDA tests again, on the CPU emulator (they skip above without a GPU).
bash scripts/test-cuda-emu.sh
