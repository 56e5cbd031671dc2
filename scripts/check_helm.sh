#!/usr/bin/env bash
# Offline validation of helm/csm-serve, for CI and before a release:
#   helm lint --strict, helm template, and kubeconform -strict against the pinned
#   Kubernetes version (and the oldest one Chart.yaml accepts), for the default values,
#   the CPU demo (no GPU anywhere in it), the production example and the all-features CI values;
#   and `helm show readme` (the chart's README.md, with its production prerequisites) is not empty.
# CRDs (ServiceMonitor, GRPCRoute, HTTPRoute) are validated against schemas converted from the
# upstream CRDs by install_tools.sh; no kind is skipped and nothing is fetched.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/k8s-tools.env
source "$REPO/scripts/k8s-tools.env"
TOOLS=${CSM_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/csm-serve/tools}
CHART="$REPO/helm/csm-serve"
bash "$REPO/scripts/install_tools.sh" >/dev/null
HELM="$TOOLS/bin/helm"
KUBECONFORM="$TOOLS/bin/kubeconform"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# Keep helm away from the user's repositories, plugins and caches.
export HELM_CACHE_HOME="$WORK/helm-cache" HELM_CONFIG_HOME="$WORK/helm-config" HELM_DATA_HOME="$WORK/helm-data"

VALUES_SETS=(
  "default:"
  "cpu-demo:$CHART/examples/values-cpu-demo.yaml"
  "production:$CHART/examples/values-production.yaml"
  "all-enabled:$CHART/ci/all-enabled-values.yaml"
)
for kube in "$KUBE_VERSION" "$KUBE_MIN_VERSION"; do
  for entry in "${VALUES_SETS[@]}"; do
    name=${entry%%:*}
    file=${entry#*:}
    args=(--kube-version "$kube")
    [ -n "$file" ] && args+=(--values "$file")
    echo "== $name values, Kubernetes $kube"
    "$HELM" lint --strict "${args[@]}" "$CHART" | sed 's/^/   /'
    out="$WORK/$name-$kube.yaml"
    "$HELM" template csm "$CHART" --namespace csm "${args[@]}" >"$out"
    "$KUBECONFORM" -strict -summary -kubernetes-version "$kube" \
      -schema-location "$TOOLS/schemas/k8s/{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
      -schema-location "$TOOLS/schemas/crds/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json" \
      "$out" | sed 's/^/   /'
    if [ "$name" = cpu-demo ] && grep -qE 'nvidia\.com/gpu|runtimeClassName' "$out"; then
      echo "check_helm: the CPU demo values render a GPU limit or a RuntimeClass" >&2
      exit 1
    fi
  done
done
if [ -z "$("$HELM" show readme "$CHART")" ]; then
  echo "check_helm: helm show readme is empty (helm/csm-serve/README.md)" >&2
  exit 1
fi
echo "check_helm: chart valid for Kubernetes $KUBE_VERSION and $KUBE_MIN_VERSION"
