#!/usr/bin/env bash
# Create .venv (if missing) and install visroute with its optional backends and test tools.
# torch is pinned in pyproject.toml so a fresh machine never pulls another (e.g. multi-GB CUDA) build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/python -c "import visroute, torch, transformers, open_clip; print('visroute', visroute.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| open_clip', open_clip.__version__)"
