# Sourced by bench/gpu_moe.sh on the GPU machine: unpacks gpu-bundle/bundle.tar.xz (made by
# bench/gpu_bundle.sh) into the checkout and sets the environment its programs need. Sets
# XT_BUNDLE_BUILD (the build directory); returns non-zero, saying why, when a program cannot run.
#
# - The tests have the checkout's path compiled in: when this checkout is elsewhere, that path is
#   made a symbolic link to it (when nothing is there).
# - Libraries: the bundle's (libs/), Open MPI's (ompi/, relocated with OPAL_PREFIX), and
#   this machine's CUDA libraries: the toolkit's, and the NVIDIA wheels' beside PyTorch (NCCL).
xt_bundle_env() {
  local root here built lib dirs missing d
  here=$(pwd)
  tar -xJf gpu-bundle/bundle.tar.xz -C "$here" 2>/dev/null ||
    python3 -c 'import tarfile; tarfile.open("gpu-bundle/bundle.tar.xz").extractall(".")' ||
    { echo "gpu bundle: cannot unpack gpu-bundle/bundle.tar.xz"; return 1; }
  built=$(cat gpu-bundle/SOURCE_DIR)
  XT_BUNDLE_BUILD=$(cat gpu-bundle/BUILD_DIR)
  if [ "$built" != "$here" ]; then
    if [ -e "$built" ] && [ "$(cd "$built" && pwd -P)" != "$(pwd -P)" ]; then
      echo "gpu bundle: built at $built, which holds something else here"; return 1
    fi
    [ -e "$built" ] || { mkdir -p "$(dirname "$built")" && ln -s "$here" "$built"; } ||
      { echo "gpu bundle: cannot link $built to $here"; return 1; }
  fi
  root="$here/gpu-bundle/ompi/usr"
  export OPAL_PREFIX="$root"
  export PMIX_MCA_mca_base_component_path="$root/lib/x86_64-linux-gnu/pmix2/lib/pmix"
  export PATH="$root/bin:$PATH"
  dirs="$here/gpu-bundle/libs:$root/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu/pmix2/lib"
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && dirs="$dirs:$d"
  done
  for d in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
    for lib in "$d"/nvidia/*/lib; do [ -d "$lib" ] && dirs="$dirs:$lib"; done
  done
  export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  missing=$(ldd "$XT_BUNDLE_BUILD/xtuner" "$XT_BUNDLE_BUILD/train_cuda_test" | grep "not found" | sort -u)
  if [ -n "$missing" ]; then
    echo "gpu bundle: libraries not found:"; echo "$missing"; return 1
  fi
  echo "gpu bundle: $XT_BUNDLE_BUILD, built at $built"
}
xt_bundle_env
