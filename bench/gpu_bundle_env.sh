# Sourced by bench/gpu_moe.sh on the GPU machine: unpacks gpu-bundle/bundle.tar.xz (made by
# bench/gpu_bundle.sh) into the checkout ($BUILD/ and gpu-run/) and sets the environment its
# programs need. Sets XT_BUNDLE_BUILD (the build directory) and XT_BUNDLE_TESTS (the cuda test
# programs). Returns 1, saying why, when the programs cannot run; 2 when only the tests cannot
# (their compiled-in path could not be linked here).
#
# - The tests have the checkout's build-time path compiled in: when this checkout is elsewhere,
#   that path is made a symbolic link to it (replacing a dangling link, never anything else).
# - Libraries: the bundle's (gpu-run/libs; the machine's own copy wins for the generic ones it
#   has), Open MPI's (gpu-run/ompi, relocated with OPAL_PREFIX, with Debian's MCA settings), and
#   this machine's CUDA libraries: the toolkit's, and the NVIDIA wheels' beside PyTorch (NCCL).
xt_bundle_env() {
  local here built root dirs missing d lib f status=0
  here=$(pwd)
  rm -rf gpu-run
  tar -xJf gpu-bundle/bundle.tar.xz -C "$here" 2>/dev/null ||
    python3 -c 'import tarfile; tarfile.open("gpu-bundle/bundle.tar.xz").extractall(".")' ||
    { echo "gpu bundle: cannot unpack gpu-bundle/bundle.tar.xz"; return 1; }
  built=$(cat gpu-run/SOURCE_DIR)
  XT_BUNDLE_BUILD=$(cat gpu-run/BUILD_DIR)
  mapfile -t XT_BUNDLE_TESTS < gpu-run/CUDA_TESTS
  if [ "$built" != "$here" ]; then
    if [ -L "$built" ] && [ ! -e "$built" ]; then rm -f "$built"; fi  # dangling: an earlier run's
    if [ ! -e "$built" ]; then
      mkdir -p "$(dirname "$built")" && ln -s "$here" "$built" ||
        { echo "gpu bundle: cannot link $built to $here: the tests will fail"; status=2; }
    elif [ "$(cd "$built" && pwd -P)" != "$(pwd -P)" ]; then
      echo "gpu bundle: built at $built, which holds something else here: the tests will fail"
      status=2
    fi
  fi
  # Generic libraries the machine may have in a newer version: its copy wins.
  mkdir -p gpu-run/libs-unused
  for f in libgomp.so.1 libudev.so.1 libpcre2-8.so.0 libOpenCL.so.1; do
    if [ -f "gpu-run/libs/$f" ] && ldconfig -p 2>/dev/null | grep -q " $f "; then
      mv "gpu-run/libs/$f" gpu-run/libs-unused/
    fi
  done
  root="$here/gpu-run/ompi/usr"
  export OPAL_PREFIX="$root"
  export PMIX_MCA_mca_base_component_path="$root/lib/x86_64-linux-gnu/pmix2/lib/pmix"
  export OMPI_MCA_mca_base_param_files="$here/gpu-run/ompi/etc/openmpi/openmpi-mca-params.conf"
  export OMPI_MCA_mca_base_component_show_load_errors=0
  export OMPI_MCA_btl_vader_single_copy_mechanism=none  # containers may refuse ptrace's copy
  export PATH="$root/bin:$PATH"
  dirs="$here/gpu-run/libs:$root/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu/pmix2/lib"
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && dirs="$dirs:$d"
  done
  for d in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
    for lib in "$d"/nvidia/*/lib; do [ -d "$lib" ] && dirs="$dirs:$lib"; done
  done
  export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  missing=$(for f in "$XT_BUNDLE_BUILD"/*; do
    [ -f "$f" ] && [ -x "$f" ] && ldd "$f" 2>/dev/null | grep "not found"
  done | sort -u)
  if [ -n "$missing" ]; then
    echo "gpu bundle: libraries not found:"; echo "$missing"; return 1
  fi
  echo "gpu bundle: $XT_BUNDLE_BUILD, built at $built; cuBLAS: $(ldd "$XT_BUNDLE_BUILD/xtuner" |
    awk '/libcublas.so/ {print $3}'), NCCL: $(ldd "$XT_BUNDLE_BUILD/xtuner" |
    awk '/libnccl.so/ {print $3}')"
  return $status
}
xt_bundle_env
