#!/usr/bin/env bash
# Prepares bench/gpu_moe.sh for a GPU machine that cannot build the project: the lent H200s run
# an image with CUDA, CMake and PyTorch but none of the Debian packages the engine links (oneDNN,
# Open MPI, PCRE2, ...), and reach no package registry. Run here (no GPU needed); it
#
#   1. builds the CUDA build (sm_90, no -march=native: the GPU machine's CPU may differ) in
#      $BUILD (default build-gpu) with the tests and the benchmark;
#   2. packs gpu-bundle/bundle.tar.xz: the executables bench/gpu_moe.sh runs,
#      the shared libraries they need that are neither glibc's, the compiler runtime's nor CUDA's
#      (found here with ldd), and a relocatable Open MPI runtime (mpirun for the 2-rank GPU test),
#      plus the absolute path this checkout was built at (the tests have it compiled in). It
#      unpacks into $BUILD/ and gpu-run/ (libs/, ompi/), so that gpu-bundle/ stays one file.
#
# bench/gpu_moe.sh unpacks the bundle when it finds it, instead of building, and takes the CUDA
# libraries (cuBLAS, cuBLASLt, NCCL, the runtime) from the GPU machine. gpu-bundle/ is ignored by
# git; carry it: device run with carry ["gpu-bundle"] and the command `bash bench/gpu_moe.sh`
# (17 MB, beside the checkout's 15: the device tool carries 64 MiB).
#
#   bench/gpu_bundle.sh        # BUILD=build-gpu JOBS=2 SKIP_BUILD=0
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-gpu}
JOBS=${JOBS:-2}
OUT=gpu-bundle
# What bench/gpu_moe.sh runs: the `cuda` tests, the 2-rank mesh test (and the programs it
# starts), the CLI and the benchmark.
TARGETS=(xtuner gpu_moe_bench train_mpi_test comm_selftest)

if [ "${SKIP_BUILD:-0}" != 1 ]; then  # SKIP_BUILD=1: pack $BUILD as it is (to test the packing)
  cmake -S . -B "$BUILD" -DXTUNER_CUDA=ON -DXT_NATIVE=OFF -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES=90 > "$BUILD.configure.log" 2>&1 ||
    { cat "$BUILD.configure.log"; exit 1; }
  cmake --build "$BUILD" -j"$JOBS" > "$BUILD.build.log" 2>&1 || { tail -40 "$BUILD.build.log"; exit 1; }
fi
mapfile -t CUDA_TESTS < <(for f in tests/cuda/*_test.cc tests/cuda/*_test.cu; do basename "${f%.*}"; done)
for t in "${TARGETS[@]}" "${CUDA_TESTS[@]}"; do
  [ -x "$BUILD/$t" ] || { echo "gpu_bundle: $BUILD/$t is missing"; exit 1; }
done
# The path the tests have compiled in (their data, the xtuner they start): the build's source.
SOURCE=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$BUILD/CMakeCache.txt")
[ -n "$SOURCE" ] || { echo "gpu_bundle: no CMAKE_HOME_DIRECTORY in $BUILD/CMakeCache.txt"; exit 1; }

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
RUN=gpu-run  # unpacked beside the bundle on the GPU machine (not carried back and forth)
mkdir -p "$STAGE/$BUILD" "$STAGE/$RUN/libs" "$STAGE/$RUN/ompi"
# The programs gpu_moe.sh runs, and the CMake cache (for the record). The cuda tests run as
# programs there (ctest's discovery needs this machine's CMake modules).
for t in "${TARGETS[@]}" "${CUDA_TESTS[@]}"; do
  cp -a "$BUILD/$t" "$STAGE/$BUILD/"
done
cp "$BUILD/CMakeCache.txt" "$STAGE/$BUILD/"
printf '%s\n' "${CUDA_TESTS[@]}" > "$STAGE/$RUN/CUDA_TESTS"

# Shared libraries: what ldd resolves outside glibc, zlib, the compiler runtime and CUDA / NVIDIA
# (the GPU machine has its own, newer or matching its driver: ours must not shadow them).
system_lib() {
  case "$(basename "$1")" in
    libc.so* | libm.so* | libdl.so* | libpthread.so* | librt.so* | ld-linux* | libgcc_s.so* | \
      libz.so* | libstdc++.so* | libcuda.so* | libcudart.so* | libcublas* | libnccl* | \
      libnvidia* | libcudnn*) return 0 ;;
  esac
  return 1
}
for t in "${TARGETS[@]}" "${CUDA_TESTS[@]}"; do
  ldd "$BUILD/$t" | awk '/=> \// {print $3}'
done | sort -u | while read -r lib; do
  system_lib "$lib" || cp -L "$lib" "$STAGE/$RUN/libs/"
done

# Open MPI as Debian installs it, relocatable (OPAL_PREFIX; PMIx's plugins and Debian's MCA
# settings named explicitly): mpirun, its plugins and help files, PMIx, hwloc and libevent.
for p in openmpi-bin libopenmpi3 openmpi-common libpmix2 libhwloc15 libevent-core-2.1-7 \
  libevent-pthreads-2.1-7; do
  dpkg -L "$p" | grep -v -e /share/doc -e /share/man -e /share/lintian | while read -r f; do
    if [ -f "$f" ] || [ -L "$f" ]; then
      mkdir -p "$STAGE/$RUN/ompi$(dirname "$f")"
      cp -a "$f" "$STAGE/$RUN/ompi$f"
    fi
  done
done
ln -sf orterun "$STAGE/$RUN/ompi/usr/bin/mpirun"
echo "$SOURCE" > "$STAGE/$RUN/SOURCE_DIR"
echo "$BUILD" > "$STAGE/$RUN/BUILD_DIR"

rm -rf "$OUT"
mkdir -p "$OUT"
tar -C "$STAGE" -cf - "$BUILD" "$RUN" | xz -T"$JOBS" -6 > "$OUT/bundle.tar.xz"
echo "gpu_bundle: $OUT/bundle.tar.xz $(du -h "$OUT/bundle.tar.xz" | cut -f1)" \
  "(${#CUDA_TESTS[@]} cuda tests, $(ls "$STAGE/$RUN/libs" | wc -l) libraries, built at $SOURCE)"
echo "tracked files: $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes;" \
  "the device tool carries at most 64 MiB in all"
