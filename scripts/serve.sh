#!/usr/bin/env bash
# Installs csm-serve (idempotent) and starts it. With no flags: the offline demo model
# (`bench` preset, random weights: the audio is noise): gRPC on port 50051, the
# OpenAI-compatible HTTP API on 8000, metrics on 9090.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NO_TORCH_COMPILE=1
exec .venv/bin/csm-serve "$@"
