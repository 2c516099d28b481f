#!/usr/bin/env bash
# Installs everything xtuner.cpp needs to build and test, from Debian's packages.
# Idempotent: packages already present are left alone. Run as root (or with sudo).
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config
  ninja-build          # the scripts' build tool: on 2 cores the test command's steps took 721 s
                       # with it and 833 s with make (which waits more between targets)
  libdnnl-dev          # oneDNN: CPU GEMM (see docs/design.md for why not OpenBLAS)
  ocl-icd-opencl-dev   # OpenCL headers and loader: Debian's dnnl-config.cmake requires them
                       # (a recommendation of libdnnl-dev that --no-install-recommends skips)
  libomp-dev           # OpenMP runtime headers (libgomp ships with g++)
  nlohmann-json3-dev   # JSON: config.json, safetensors headers
  libcli11-dev         # command-line parsing
  libtomlplusplus-dev  # training configs (TOML)
  libpcre2-dev         # tokenizer pre-tokenizer regexes (JIT)
  libutf8proc-dev      # Unicode normalization (NFC/NFKC) for tokenizers
  libxxhash-dev        # content hashes of the tokenized cache
  libopenmpi-dev openmpi-bin  # multi-process training (mpirun), see docs/distributed.md
  libgtest-dev googletest libgmock-dev
  libbenchmark-dev
  ccache               # the test command's builds share the sources they compile alike
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
