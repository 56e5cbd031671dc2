#!/usr/bin/env bash
# CI check of the Go client (client/go):
#   1. the committed stubs in client/go/csmv1 are exactly what scripts/gen_go.sh generates;
#   2. go.mod/go.sum are tidy and the code is gofmt-formatted;
#   3. go vet ./... and go test ./... pass.
# The integration tests talk to the plaintext server at $CSM_SERVER (host:port). When it is
# unset and .venv/bin/csm-serve exists, this script starts `csm-serve --model tiny` on a free
# loopback port for the tests (metrics off, voices in a temporary directory; other settings
# from the CSM_* environment, e.g. CSM_WATERMARK=false) and stops it afterwards. Under CI=true the integration tests fail
# rather than skip when CSM_SERVER ends up unset.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}

tmp=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

"$ROOT/scripts/gen_go.sh" "$tmp"
if ! diff -r "$tmp/csmv1" "$ROOT/client/go/csmv1"; then
  echo "check_go.sh: client/go/csmv1 is stale or hand-edited; run scripts/gen_go.sh and commit the result" >&2
  exit 1
fi

cd "$ROOT/client/go"
if ! go mod tidy -diff; then
  echo "check_go.sh: go.mod/go.sum are not tidy; run 'go mod tidy' in client/go" >&2
  exit 1
fi
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
  echo "check_go.sh: not gofmt-formatted (run 'gofmt -w .' in client/go):" >&2
  echo "$unformatted" >&2
  exit 1
fi
go vet ./...

if [ -z "${CSM_SERVER:-}" ] && [ -x "$ROOT/.venv/bin/csm-serve" ]; then
  port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  echo "check_go.sh: starting csm-serve --model tiny on 127.0.0.1:$port (log: $tmp/csm-serve.log)" >&2
  "$ROOT/.venv/bin/csm-serve" --model tiny --host 127.0.0.1 --port "$port" --http-port 0 --metrics-port 0 \
    --voices-dir "$tmp/voices" >"$tmp/csm-serve.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 600); do  # up to 5 minutes to import torch and build the model
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "check_go.sh: csm-serve exited before listening:" >&2
      cat "$tmp/csm-serve.log" >&2
      exit 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.5
  done
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "check_go.sh: csm-serve is not listening on 127.0.0.1:$port after 5 minutes:" >&2
    tail -n 40 "$tmp/csm-serve.log" >&2
    exit 1
  fi
  export CSM_SERVER=127.0.0.1:$port
fi

go test -count=1 ./...
