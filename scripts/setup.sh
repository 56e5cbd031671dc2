#!/usr/bin/env bash
# Idempotent install of csm-serve into ./.venv (CPU or CUDA hosts; no GPU needed).
# One line per step on standard error; uv shows its own progress while it downloads.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
step() { echo "setup: $*" >&2; }
if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
fi
step "installing uv into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check "uv>=0.5"
UV=".venv/bin/uv"
step "installing csm-serve, csm-client and csm-wire (editable) with the dev extra: torch and its" \
  "companions are large, a first install takes minutes; later runs only check"
"$UV" pip install --python .venv/bin/python -e ./protos -e ./client -e ".[dev]"
# silentcipher pins torch<=2.0 in its metadata but runs on the pinned torch: no deps.
step "installing silentcipher 1.0.5 (the watermark) without its stale dependency pins"
"$UV" pip install -q --python .venv/bin/python --no-deps "silentcipher==1.0.5"
step "done: .venv/bin/csm-serve, .venv/bin/csm-say ($(.venv/bin/python --version 2>&1))"
