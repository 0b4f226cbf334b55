#!/usr/bin/env bash
# Set up gradpack on this machine: torch (a CPU build where there is no CUDA GPU, so no
# gigabytes of CUDA wheels), then gradpack itself in editable mode.
#   bash tools/setup.sh          # library + CLI
#   bash tools/setup.sh --dev    # also the test and benchmark tools
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
TORCH_VERSION="${GRADPACK_TORCH_VERSION:-2.13.0}"
# Where a CPU-only torch comes from when no local build is offered (override for mirrors).
TORCH_CPU_INDEX="${GRADPACK_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check "$@"; }

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: CUDA GPU found: installing torch==$TORCH_VERSION (CUDA build)"
    pip_install "torch==$TORCH_VERSION"
  else
    echo "setup: no CUDA GPU: installing a CPU build of torch==$TORCH_VERSION"
    pip_install "torch==$TORCH_VERSION+cpu" 2>/dev/null \
      || pip_install "torch==$TORCH_VERSION" --index-url "$TORCH_CPU_INDEX"
  fi
fi

if [[ "${1:-}" == "--dev" ]]; then
  pip_install -e ".[dev]"
else
  pip_install -e .
fi
"$PY" -c "import gradpack, torch; print(f'setup: gradpack {gradpack.__version__}, torch {torch.__version__}')"
