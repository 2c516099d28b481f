# Sourced by the benchmarks: makes $VENV (default bench/.venv) a Python venv with torch,
# transformers and peft (the peers), pinned in tools/reference/requirements.txt and installed with
# --no-deps (plain `pip install torch` pulls GBs of CUDA wheels). A venv that has both is reused.
VENV=${VENV:-bench/.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, transformers, peft" 2>/dev/null; then
  "$VENV/bin/pip" install -q --no-deps -r tools/reference/requirements.txt
fi
