#!/usr/bin/env bash
# Installs everything (idempotent) and runs the whole test suite: Python (unit, model parity,
# engine, end to end over loopback gRPC, Helm chart), then the Go client against a live server.
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_TORCH_COMPILE=1 HF_HUB_OFFLINE=1
bash scripts/setup.sh
bash scripts/install_tools.sh
bash scripts/install_browser.sh  # headless Chromium for tests/e2e/test_playground.py
.venv/bin/python -m pytest -q "$@"
bash scripts/check_go.sh
