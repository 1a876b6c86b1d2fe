#!/usr/bin/env bash
# Create .venv (if missing) and install visroute with every optional backend and the test tools.
#
# pyproject.toml declares a torch *range*, so visroute never fights a torch a user already has; this script pins
# the exact torch / torchvision that CI and the developers run, for reproducibility. On a machine without a GPU,
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh
# installs the CPU-only build of the same versions (no CUDA libraries: several GB less).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
PIP=(.venv/bin/python -m pip install --progress-bar on)
step() { echo "[setup $(date +%H:%M:%S)] $*"; }

if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
else
  step "using the existing .venv ($(.venv/bin/python --version 2>&1))"
fi
step "1/4 upgrading pip"
"${PIP[@]}" --upgrade pip
step "2/4 installing ${TORCH_PINS[*]}${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL} (the largest download)"
"${PIP[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "${TORCH_PINS[@]}"
step "3/4 installing visroute (editable) with the extras llm, openclip, datasets, serve, router, test"
"${PIP[@]}" -e ".[dev]" "${TORCH_PINS[@]}"
step "4/4 checking the install"
.venv/bin/python -c "import visroute, torch, transformers, open_clip; print('visroute', visroute.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| open_clip', open_clip.__version__)"
step "ready: .venv holds $(du -sh .venv | cut -f1)"
