#!/usr/bin/env bash
# Generates the Go stubs of csm.v1 (protos/csm/v1/*.proto) into client/go/csmv1.
#
#   scripts/gen_go.sh           regenerate the committed stubs
#   scripts/gen_go.sh DIR       write them under DIR/csmv1 instead (scripts/check_go.sh uses this)
#
# protoc is the compiler bundled with grpcio-tools (.venv, pinned in pyproject.toml), so the
# "protoc vX" line of the generated header changes only when grpcio-tools does. The two Go
# plugins are pinned here and installed once with `go install` into .cache/tools/bin
# ($CSM_TOOLS_DIR/bin); later runs only check their --version.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2
GO_MODULE=github.com/csm-serve/csm-serve/client/go
TOOLS_BIN=${CSM_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/csm-serve/tools}/bin  # shared with scripts/install_tools.sh
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${1:-$ROOT/client/go}

# install_tool BINARY PACKAGE VERSION VERSION_LINE: go install PACKAGE@VERSION into TOOLS_BIN
# unless BINARY there already reports VERSION_LINE.
install_tool() {
  local bin=$TOOLS_BIN/$1
  if [ -x "$bin" ] && [ "$("$bin" --version 2>/dev/null)" = "$4" ]; then
    return
  fi
  command -v go >/dev/null || { echo "gen_go.sh: 'go' is not on PATH; install Go >= 1.24 (https://go.dev/dl)" >&2; exit 1; }
  echo "gen_go.sh: installing $2@$3 into $TOOLS_BIN" >&2
  mkdir -p "$TOOLS_BIN"
  GOBIN=$TOOLS_BIN go install "$2@$3"
}
install_tool protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go \
  "$PROTOC_GEN_GO_VERSION" "protoc-gen-go $PROTOC_GEN_GO_VERSION"
install_tool protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc \
  "$PROTOC_GEN_GO_GRPC_VERSION" "protoc-gen-go-grpc ${PROTOC_GEN_GO_GRPC_VERSION#v}"

"$PYTHON" -c "import grpc_tools" 2>/dev/null || {
  echo "gen_go.sh: grpcio-tools is missing from $PYTHON; run scripts/setup.sh first" >&2; exit 1; }

mkdir -p "$OUT/csmv1"
rm -f "$OUT"/csmv1/*.pb.go
# google/rpc/status.proto (ConverseResponse.error) comes from googleapis-common-protos; its Go
# package is google.golang.org/genproto/googleapis/rpc/status.
GOOGLEAPIS=$("$PYTHON" -c 'import pathlib, google.rpc.status_pb2 as m; print(pathlib.Path(m.__file__).parents[2])')
cd "$ROOT/protos"
"$PYTHON" -m grpc_tools.protoc -I . -I "$GOOGLEAPIS" \
  --plugin=protoc-gen-go="$TOOLS_BIN/protoc-gen-go" \
  --plugin=protoc-gen-go-grpc="$TOOLS_BIN/protoc-gen-go-grpc" \
  --go_out="$OUT" --go_opt=module=$GO_MODULE \
  --go-grpc_out="$OUT" --go-grpc_opt=module=$GO_MODULE \
  csm/v1/*.proto
