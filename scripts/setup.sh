#!/usr/bin/env bash
# Set up rlxf in ./.venv with a PyTorch build that fits this machine.
#
#   bash scripts/setup.sh          # rlxf and its runtime dependencies
#   bash scripts/setup.sh test     # + test dependencies and Chromium (browser tests)
#
# PyTorch: an existing torch in the venv is kept. Otherwise a machine with an NVIDIA
# GPU gets the CUDA build from PyPI, and a CPU-only machine gets torch==2.13.0 without
# the CUDA packages: from a local wheel where pip is configured with one, or from
# PyTorch's CPU index when you set TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    pip install -q "torch>=2.4"
  else
    pip install -q "torch==2.13.0" ${TORCH_CPU_INDEX:+--index-url "$TORCH_CPU_INDEX" --extra-index-url https://pypi.org/simple}
  fi
fi

if [ "${1:-}" = "test" ]; then
  pip install -q -e ".[dev]"
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
        || echo "setup: could not install chromium; browser tests will fail" >&2
    else
      echo "setup: install chromium and chromium-driver (e.g. sudo apt-get install chromium chromium-driver) for the browser tests" >&2
    fi
  fi
else
  pip install -q -e .
fi
echo "setup: rlxf is installed in .venv (activate with: . .venv/bin/activate)"
