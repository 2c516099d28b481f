#!/usr/bin/env bash
# Builds the CUDA backend for the CPU emulator (src/xtuner/cuda/emu/emu.h) and runs the CUDA tests
# on it: every `cuda` test and the 2-rank GPU mesh test, which skip on a machine without a GPU
# otherwise. It needs CUDA's headers only (/usr/local/cuda/include, or $CUDA_HOME/include), no GPU
# and no nvcc. A pass here is not a GPU run: it checks the CUDA code's logic (indices, barriers,
# shared memory, launch limits, host code) against the CPU twins, not its speed, memory model or
# tensor-core rounding. scripts/test.sh runs it after the main tests.
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_INCLUDE=${CUDA_HOME:-/usr/local/cuda}/include
if [ ! -f "$CUDA_INCLUDE/cuda_runtime.h" ]; then
  echo "test-cuda-emu: skipped: no CUDA headers in $CUDA_INCLUDE"
  exit 0
fi
BUILD_DIR=${EMU_BUILD_DIR:-build-emu}
# Ninja for new build directories (one made by make before keeps make).
if [ -z "${CMAKE_GENERATOR:-}" ] && command -v ninja > /dev/null; then export CMAKE_GENERATOR=Ninja; fi
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DXTUNER_CUDA_EMU=ON
# What the tests below run: the cuda test programs, the mesh test and the programs it starts.
targets=(xtuner comm_selftest train_mpi_test emu_test)
for t in tests/cuda/*_test.cc tests/cuda/*_test.cu; do targets+=("$(basename "${t%.*}")"); done
cmake --build "$BUILD_DIR" -j "${JOBS:-2}" --target "${targets[@]}"
cd "$BUILD_DIR"
echo "test-cuda-emu: the CUDA tests on the CPU emulator (not a GPU)"
ctest --output-on-failure -j "${JOBS:-2}" --timeout 900 -L cuda
# The kernels with asynchronous copies once more with the copies landing when issued and the
# threads in reverse order: a tile buffer refilled while another warp still reads it fails there.
# (ctest's names of parameterised tests end in " # GetParam() = ...", hence the space.)
# Then with each warp running alone up to the block barrier: a missing __syncthreads between
# warps that share a tile fails there.
ASYNC_TESTS='Matches.*_mma |MmaSm80|GroupedGemmBf16'
XT_CUDA_EMU_ASYNC=early XT_CUDA_EMU_ORDER=reverse \
  ctest --output-on-failure -j "${JOBS:-2}" --timeout 900 -R "$ASYNC_TESTS" -E LongDoc
for order in forward reverse; do  # the first warp ahead, then the last
  XT_CUDA_EMU_WARPS=ahead XT_CUDA_EMU_ORDER=$order \
    ctest --output-on-failure -j "${JOBS:-2}" --timeout 900 -R "$ASYNC_TESTS" -E LongDoc
done
ctest --output-on-failure --timeout 900 -R 'Distributed\.GpuMeshesFollowTheCpuRun'
