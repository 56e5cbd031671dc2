#!/usr/bin/env bash
# Idempotent install of csm-serve into ./.venv (CPU or CUDA hosts; no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "uv>=0.5"
UV=".venv/bin/uv"
"$UV" pip install -q --python .venv/bin/python -e ./protos -e ./client -e ".[dev]"
# silentcipher pins torch<=2.0 in its metadata but runs on the pinned torch: no deps.
"$UV" pip install -q --python .venv/bin/python --no-deps "silentcipher==1.0.5"
