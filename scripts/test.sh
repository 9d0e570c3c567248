#!/usr/bin/env bash
# Set up a virtual environment (CPU build of PyTorch) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# The CPU build first, so that nothing below pulls a CUDA build of torch.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
python -m pytest "$@"
