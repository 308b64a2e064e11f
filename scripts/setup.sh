#!/usr/bin/env bash
# One-time set-up (idempotent): a virtual environment in .venv with streamer installed.
# torch: the CPU wheel 2.13.0 when no torch is present; bring your own CUDA build otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
