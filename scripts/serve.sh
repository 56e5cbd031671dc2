#!/usr/bin/env bash
# Installs csm-serve (idempotent) and starts it. With no flags: the offline demo model
# (`bench` preset, random weights: the audio is noise): gRPC on port 50051, the
# OpenAI-compatible HTTP API on 8000, metrics on 9090.
# The install (scripts/setup.sh) runs only when .venv is missing or a pyproject.toml or
# setup.sh changed since the last one (a hash in .venv/.setup-stamp); CSM_SETUP=always forces it.
set -euo pipefail
cd "$(dirname "$0")/.."
STAMP=.venv/.setup-stamp
hash_cmd=(sha256sum)
command -v sha256sum >/dev/null || hash_cmd=(shasum -a 256)  # macOS
want=$(cat pyproject.toml client/pyproject.toml protos/pyproject.toml scripts/setup.sh | "${hash_cmd[@]}" | cut -d' ' -f1)
if [ "${CSM_SETUP:-}" = always ] || [ ! -x .venv/bin/csm-serve ] || [ ! -f "$STAMP" ] ||
  [ "$(cat "$STAMP")" != "$want" ]; then
  rm -f "$STAMP"
  bash scripts/setup.sh
  printf '%s\n' "$want" >"$STAMP"
else
  echo "serve: .venv is up to date with the pyproject.toml files and setup.sh; skipping the install" >&2
fi
export NO_TORCH_COMPILE=1
exec .venv/bin/csm-serve "$@"
