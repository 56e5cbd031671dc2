#!/usr/bin/env bash
# Idempotent install of the pinned tools that validate the Helm chart offline, and of the
# programs the end-to-end tests check the server with:
#   bin/helm, bin/kubeconform     built with `go install` from the Go module proxy
#   bin/grpcurl, bin/ghz           the same way (standard gRPC tools, used through reflection)
#   ffmpeg, opusinfo, flac         Debian packages (independent decoders of the output audio),
#                                  installed with apt-get when missing and running as root
#   schemas/k8s/v<X>-local-strict  Kubernetes JSON schemas (kubernetes-validate wheel, PyPI)
#   schemas/crds/<group>/...       ServiceMonitor, GRPCRoute and HTTPRoute schemas, converted from the
#                                  CRDs inside the prometheus-operator and gateway-api modules
# Pins live in scripts/k8s-tools.env. Everything lands in $CSM_TOOLS_DIR (default
# ${XDG_CACHE_HOME:-~/.cache}/csm-serve/tools, shared by every clone on the machine) with a stamp per part, so a second run only checks stamps.
# Safe to run several at once (a flock on $TOOLS/.lock serialises them) and to kill: a part's
# stamp is removed before the part is rebuilt and written (atomically) only once it is complete;
# schema sets are built in a temporary folder and renamed into place.
# Go's own caches (GOMODCACHE, GOCACHE) are reused, so a rebuild after a pin change is
# incremental. Nothing is fetched at validation time.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/k8s-tools.env
source "$REPO/scripts/k8s-tools.env"
TOOLS=${CSM_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/csm-serve/tools}
mkdir -p "$TOOLS/bin" "$TOOLS/stamps" "$TOOLS/downloads" "$TOOLS/schemas"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

# One run at a time per tools folder: a second waits for the first, then finds its stamps.
if command -v flock >/dev/null; then
  exec 9>"$TOOLS/.lock"
  if ! flock -n 9; then
    echo "install_tools: another install_tools.sh holds $TOOLS/.lock; waiting for it" >&2
    flock 9
  fi
  rm -rf "$TOOLS"/schemas/.k8s.* "$TOOLS"/schemas/.crds.*  # left by a run that was killed
else
  echo "install_tools: no flock(1) here (util-linux); do not run two install_tools.sh at once" >&2
fi

need() {
  command -v "$1" >/dev/null || { echo "install_tools: '$1' is required ($2)" >&2; exit 1; }
}

# fresh NAME VALUE: true when the part NAME was already installed with this exact VALUE.
fresh() { [ -f "$TOOLS/stamps/$1" ] && [ "$(cat "$TOOLS/stamps/$1")" = "$2" ]; }
# stamp NAME VALUE: written last, once the part is complete, through a rename (never half-written).
stamp() { printf '%s' "$2" >"$TOOLS/stamps/.$1.tmp" && mv -f "$TOOLS/stamps/.$1.tmp" "$TOOLS/stamps/$1"; }
# unstamp NAME: before rebuilding a part, so a run killed halfway leaves no stamp vouching for it.
unstamp() { rm -f "$TOOLS/stamps/$1"; }

# replace_dir NEW FINAL: put the complete folder NEW at FINAL (the old one goes away).
replace_dir() {
  rm -rf "$2.old"
  if [ -e "$2" ]; then mv "$2" "$2.old"; fi
  mv "$1" "$2"
  rm -rf "$2.old"
}

# module_dir MODULE@VERSION: download a Go module (cached) and print its source folder.
module_dir() {
  go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

python_with_yaml() {
  for py in "${PYTHON:-}" "$REPO/.venv/bin/python" python3; do
    if [ -n "$py" ] && "$py" -c 'import pip, yaml' 2>/dev/null; then echo "$py"; return; fi
  done
  echo "install_tools: need a Python with pip and PyYAML (run scripts/setup.sh or set PYTHON)" >&2
  exit 1
}

install_helm() {
  fresh helm "$HELM_VERSION" && [ -x "$TOOLS/bin/helm" ] && return
  need go "Go 1.26+ builds helm from the Go module proxy"
  unstamp helm
  local dir k8s_minor
  dir=$(module_dir "helm.sh/helm/v3@$HELM_VERSION")
  # Helm's release build sets the default Kubernetes capabilities from its client-go
  # version (v0.X.Y -> 1.X); do the same so `helm version` and defaults match a release.
  k8s_minor=$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$dir/go.mod")
  local p=helm.sh/helm/v3
  GOBIN="$TOOLS/bin" go install -trimpath -ldflags "-s -w \
    -X $p/internal/version.version=$HELM_VERSION \
    -X $p/internal/version.gitTreeState=clean \
    -X $p/pkg/lint/rules.k8sVersionMajor=1 -X $p/pkg/lint/rules.k8sVersionMinor=$k8s_minor \
    -X $p/pkg/chartutil.k8sVersionMajor=1 -X $p/pkg/chartutil.k8sVersionMinor=$k8s_minor" \
    "$p/cmd/helm@$HELM_VERSION"
  stamp helm "$HELM_VERSION"
}

install_kubeconform() {
  fresh kubeconform "$KUBECONFORM_VERSION" && [ -x "$TOOLS/bin/kubeconform" ] && return
  need go "Go 1.26+ builds kubeconform from the Go module proxy"
  unstamp kubeconform
  GOBIN="$TOOLS/bin" go install -trimpath -ldflags "-s -w -X main.version=$KUBECONFORM_VERSION" \
    "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
  stamp kubeconform "$KUBECONFORM_VERSION"
}

install_grpc_tools() {
  need go "Go 1.26+ builds grpcurl and ghz from the Go module proxy"
  if ! fresh grpcurl "$GRPCURL_VERSION" || [ ! -x "$TOOLS/bin/grpcurl" ]; then
    unstamp grpcurl
    GOBIN="$TOOLS/bin" go install -trimpath -ldflags "-s -w -X main.version=$GRPCURL_VERSION" \
      "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
    stamp grpcurl "$GRPCURL_VERSION"
  fi
  if ! fresh ghz "$GHZ_VERSION" || [ ! -x "$TOOLS/bin/ghz" ]; then
    unstamp ghz
    GOBIN="$TOOLS/bin" go install -trimpath -ldflags "-s -w -X main.version=$GHZ_VERSION" \
      "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION"
    stamp ghz "$GHZ_VERSION"
  fi
}

# ffmpeg (ffmpeg, ffprobe), opus-tools (opusinfo) and flac (flac, metaflac) from the distribution, not from the
# Python wheels the server encodes with: the tests want a decoder independent of the encoder.
install_audio_tools() {
  command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null && command -v opusinfo >/dev/null &&
    command -v flac >/dev/null && command -v metaflac >/dev/null && command -v jq >/dev/null && return
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install_tools: ffmpeg, opusinfo, flac or jq is missing; install them (Debian: apt-get install ffmpeg opus-tools flac jq)" >&2
    return
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ffmpeg opus-tools flac jq >/dev/null
}

install_core_schemas() {
  local want="$K8S_SCHEMAS_WHEEL $KUBE_VERSION $KUBE_MIN_VERSION"
  fresh k8s-schemas "$want" && [ -d "$TOOLS/schemas/k8s/v$KUBE_VERSION-local-strict" ] &&
    [ -d "$TOOLS/schemas/k8s/v$KUBE_MIN_VERSION-local-strict" ] && return
  unstamp k8s-schemas
  local py req wheel new
  py=$(python_with_yaml)
  wheel="$TOOLS/downloads/kubernetes_validate-${K8S_SCHEMAS_WHEEL#*==}-py3-none-any.whl"
  # A wheel already downloaded with the pinned hash is reused without asking the index.
  if [ ! -f "$wheel" ] || ! echo "$K8S_SCHEMAS_SHA256  $wheel" | sha256sum -c --status 2>/dev/null; then
    rm -f "$wheel"
    req="$TOOLS/downloads/k8s-schemas.txt"
    printf '%s --hash=sha256:%s\n' "$K8S_SCHEMAS_WHEEL" "$K8S_SCHEMAS_SHA256" >"$req"
    "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --require-hashes -r "$req" -d "$TOOLS/downloads"
    wheel=$(ls "$TOOLS"/downloads/kubernetes_validate-"${K8S_SCHEMAS_WHEEL#*==}"-*.whl)
  fi
  new=$(mktemp -d "$TOOLS/schemas/.k8s.XXXXXX") && chmod 755 "$new"
  for v in $KUBE_VERSION $KUBE_MIN_VERSION; do
    "$py" "$REPO/scripts/k8s_schemas.py" core "$wheel" "$v" "$new" || { rm -rf "$new"; return 1; }
  done
  replace_dir "$new" "$TOOLS/schemas/k8s"
  stamp k8s-schemas "$want"
}

install_crd_schemas() {
  local want="prometheus-operator $PROMETHEUS_OPERATOR_VERSION gateway-api $GATEWAY_API_VERSION grpcroutes httproutes"
  fresh crd-schemas "$want" && [ -d "$TOOLS/schemas/crds" ] && return
  unstamp crd-schemas
  need go "the CRDs come from Go modules"
  local py prom gw new
  py=$(python_with_yaml)
  prom=$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")
  gw=$(module_dir "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")
  new=$(mktemp -d "$TOOLS/schemas/.crds.XXXXXX") && chmod 755 "$new"
  "$py" "$REPO/scripts/k8s_schemas.py" crd \
    "$prom/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" \
    "$gw/config/crd/standard/gateway.networking.k8s.io_grpcroutes.yaml" \
    "$gw/config/crd/standard/gateway.networking.k8s.io_httproutes.yaml" \
    "$new" || { rm -rf "$new"; return 1; }
  replace_dir "$new" "$TOOLS/schemas/crds"
  stamp crd-schemas "$want"
}

install_helm
install_kubeconform
install_core_schemas
install_crd_schemas
install_grpc_tools
install_audio_tools
echo "install_tools: helm $HELM_VERSION, kubeconform $KUBECONFORM_VERSION, grpcurl $GRPCURL_VERSION," \
  "ghz $GHZ_VERSION, Kubernetes schemas v$KUBE_VERSION and v$KUBE_MIN_VERSION in $TOOLS;" \
  "ffmpeg and opusinfo: $(command -v ffmpeg >/dev/null && command -v opusinfo >/dev/null && echo present || echo missing)"
