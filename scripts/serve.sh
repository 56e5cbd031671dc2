#!/usr/bin/env bash
# Installs csm-serve (idempotent) and starts it. With no flags: the offline demo model
# (`bench` preset, random weights: the audio is noise) on port 50051, metrics on 9090.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NO_TORCH_COMPILE=1
exec .venv/bin/csm-serve "$@"
