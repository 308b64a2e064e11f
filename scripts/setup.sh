#!/usr/bin/env bash
# One-time set-up (idempotent): a virtual environment in .venv with streamer installed.
# torch: when the python3 that runs this already has torch (e.g. your CUDA build), the environment
# sees it (--system-site-packages) and uses it; otherwise the CPU wheel 2.13.0 is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  if python3 -c "import torch" 2>/dev/null; then
    echo "using the torch of $(command -v python3) ($(python3 -c 'import torch; print(torch.__version__)'))"
    python3 -m venv --system-site-packages .venv
  else
    python3 -m venv .venv
  fi
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
echo "set up: run .venv/bin/streamer, or 'source .venv/bin/activate' once to type plain 'streamer'"
