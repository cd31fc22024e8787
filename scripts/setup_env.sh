#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv) with the CPU build of torch
# 2.13.0, the package and its test tools. Sourced by main.sh and test.sh.
set -euo pipefail
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
    # TORCH_INDEX_URL: optionally PyTorch's CPU-only wheel index, to avoid the large CUDA build.
    echo "setup: installing torch 2.13.0"
    .venv/bin/pip install --quiet --disable-pip-version-check ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
fi
echo "setup: installing seq2seq and its dependencies"
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[dev]"
