#!/usr/bin/env bash
# Generates the Python code of the csm.v1 wire contract (protos/csm/v1/*.proto) into protos/csm_wire/,
# the wire package that server and client both import.
#
# Policy: the generated code is committed, so `pip install` needs no protoc and every import
# works from a plain checkout. tests/test_protos.py runs this script into a temporary
# directory and fails when the committed files differ byte for byte: after editing a .proto,
# run `scripts/gen_protos.sh` and commit the result.
#
# Usage: scripts/gen_protos.sh [OUT_DIR]   (default: protos/csm_wire)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$root/protos/csm_wire"}
python=${PYTHON:-"$root/.venv/bin/python"}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# -I protos keeps the descriptor's file name "csm/v1/speech.proto" (what reflection serves);
# google/rpc/status.proto comes from googleapis-common-protos (a grpcio-status dependency).
googleapis=$("$python" -c 'import pathlib, google.rpc.status_pb2 as m; print(pathlib.Path(m.__file__).parents[2])')
(cd "$root/protos" && "$python" -m grpc_tools.protoc -I . -I "$googleapis" \
  --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" csm/v1/*.proto)

mkdir -p "$out"
rm -f "$out"/*_pb2.py "$out"/*_pb2.pyi "$out"/*_pb2_grpc.py
for f in "$tmp"/csm/v1/*; do
  # protoc writes absolute imports ("from csm.v1 import speech_pb2"); the package lives at
  # csm_wire, so make them relative.
  sed -e 's/^from csm\.v1 import /from . import /' "$f" > "$out/$(basename "$f")"
done
