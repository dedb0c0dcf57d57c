#!/usr/bin/env bash
# Set up .venv for freeze-sweeps on a fresh machine (only Python needed).
#   bash scripts/bootstrap.sh          # runtime + the offline quickstart model
#   bash scripts/bootstrap.sh --dev    # + test and lint tools
# Without a visible NVIDIA GPU the CPU wheel of torch is pinned first, so the `torch>=2.4` range in
# pyproject.toml installs nothing more (a bare `torch` requirement would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="quickstart"
[ "${1:-}" = "--dev" ] && extras="dev"
python3 -m venv .venv 2>/dev/null || python -m venv .venv
py=.venv/bin/python
stamp=.venv/.bootstrap-$extras-$(cat pyproject.toml | sha1sum | cut -c1-12)
if [ -f "$stamp" ]; then exit 0; fi
if ! command -v nvidia-smi >/dev/null 2>&1; then
  "$py" -m pip install --quiet "torch==${FREEZE_SWEEPS_CPU_TORCH:-2.13.0}"
fi
"$py" -m pip install --quiet -e ".[$extras]"
"$py" -c "import torch, transformers, optuna, mlflow, datasets, pandas" 
touch "$stamp"
