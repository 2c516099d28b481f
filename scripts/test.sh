#!/usr/bin/env bash
# Builds xtuner.cpp and runs every test (the README's test command; .ci/run calls it), then the
# CUDA tests on the CPU emulator (scripts/test-cuda-emu.sh) where CUDA's headers are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
BUILD_DIR=${BUILD_DIR:-build}
# Ninja for new build directories (one made by make before keeps make).
if [ -z "${CMAKE_GENERATOR:-}" ] && command -v ninja > /dev/null; then export CMAKE_GENERATOR=Ninja; fi
# Through ccache: the emulator's build below compiles most of the engine with the same commands
# as this one. The cache lives in the build directory (objects built for this machine's CPU,
# -march=native, stay on it).
if command -v ccache > /dev/null; then
  mkdir -p "$BUILD_DIR"
  export CCACHE_DIR=${CCACHE_DIR:-$(cd "$BUILD_DIR" && pwd)/ccache}
  # Paths under the checkout hashed as relative ones: a unity source (build*/.../unity_0_cxx.cxx)
  # has the same text in both build directories, and is then served from the cache too.
  export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
  export CMAKE_C_COMPILER_LAUNCHER=${CMAKE_C_COMPILER_LAUNCHER-ccache}
  export CMAKE_CXX_COMPILER_LAUNCHER=${CMAKE_CXX_COMPILER_LAUNCHER-ccache}
fi
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "${JOBS:-2}"
(cd "$BUILD_DIR" && ctest --output-on-failure -j "${JOBS:-2}" --timeout 600)
# The CUDA tests again, on the CPU emulator (they skip above without a GPU).
bash scripts/test-cuda-emu.sh
