#!/usr/bin/env bash
# Build helm (pinned in hack/k8s-versions.env) into the cache outside the repository; skipped when
# present. Prints the binary's path as its last line of stdout. Used by the tests that render the chart.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/k8s-versions.env
source "$here/k8s-versions.env"
cache="${POOLBENCH_CACHE:-$HOME/.cache/poolbench}/helm/${HELM_VERSION}"
if [ ! -x "$cache/helm" ]; then
  mkdir -p "$cache"
  start=$(date +%s)
  echo "[build-helm] building helm ${HELM_VERSION} …" >&2
  tmp="$(mktemp -d "$cache/.gobin.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod GOBIN="$tmp" \
    go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >&2
  mv "$tmp/helm" "$cache/helm"
  echo "[build-helm] done in $(( $(date +%s) - start ))s" >&2
else
  echo "[build-helm] reusing $cache/helm" >&2
fi
echo "$cache/helm"
