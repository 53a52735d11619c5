#!/usr/bin/env bash
# The Prometheus Operator's CRDs (monitoring.coreos.com: PrometheusRule, ServiceMonitor, PodMonitor, ...)
# at the version pinned in hack/k8s-versions.env, copied from its Go module's zip
# (example/prometheus-operator-crd/*.yaml) into the cache outside the repository; skipped when present.
# Nothing is built. Prints the directory of the CRD files as its last line of stdout, everything else
# goes to stderr. Used by the k8s tier (tests/k8s/test_prometheusrule_k8s.py).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/k8s-versions.env
source "$here/k8s-versions.env"
: "${PROMETHEUS_OPERATOR_VERSION:?not set in k8s-versions.env}"
module=github.com/prometheus-operator/prometheus-operator
root="${POOLBENCH_CACHE:-$HOME/.cache/poolbench}/prometheus-operator-crds"
cache="$root/${PROMETHEUS_OPERATOR_VERSION}"
mkdir -p "$root"
# One fetch at a time (tests in parallel, or two worktrees); the second finds the cache ready.
exec 9>"$root/.lock"
flock 9
if [ ! -f "$cache/monitoring.coreos.com_prometheusrules.yaml" ]; then
  echo "[fetch-prometheus-operator-crds] $module@${PROMETHEUS_OPERATOR_VERSION} …" >&2
  json="$(GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod go mod download -json "$module@${PROMETHEUS_OPERATOR_VERSION}")" || {
    echo "$json" >&2
    echo "[fetch-prometheus-operator-crds] go mod download failed" >&2
    exit 1
  }
  dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$json")"
  src="$dir/example/prometheus-operator-crd"
  if [ -z "$dir" ] || [ ! -f "$src/monitoring.coreos.com_prometheusrules.yaml" ]; then
    echo "$json" >&2
    echo "[fetch-prometheus-operator-crds] no CRDs in $src" >&2
    exit 1
  fi
  tmp="$(mktemp -d "$root/.tmp.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  cp "$src"/*.yaml "$tmp/"
  chmod u+w "$tmp"/*.yaml
  mv "$tmp" "$cache"
  echo "[fetch-prometheus-operator-crds] done: $cache" >&2
else
  echo "[fetch-prometheus-operator-crds] reusing $cache" >&2
fi
echo "$cache"
