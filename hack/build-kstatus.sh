#!/usr/bin/env bash
# Build hack/kstatus (a small program over the kstatus library that Flux and kpt decide health with,
# pinned in hack/kstatus/go.mod) into the cache outside the repository; skipped when present. The cache
# is keyed by the program's sources, so an edit builds anew. Prints the binary's path as its last line
# of stdout. Used by the tests that check how GitOps tools read a PoolBenchmark's status.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$here/kstatus"
key="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-16)"
cache="${POOLBENCH_CACHE:-$HOME/.cache/poolbench}/kstatus/${key}"
mkdir -p "$cache"
if [ ! -x "$cache/kstatus" ] && command -v flock >/dev/null 2>&1; then
  exec 9>"$cache/.lock"
  flock 9   # a concurrent invocation may be building the same sources
fi
if [ ! -x "$cache/kstatus" ]; then
  start=$(date +%s)
  echo "[build-kstatus] building hack/kstatus ($key) …" >&2
  tmp="$(mktemp -d "$cache/.gobuild.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$src" && GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod \
    go build -trimpath -ldflags "-s -w" -o "$tmp/kstatus" .) >&2
  mv "$tmp/kstatus" "$cache/kstatus"
  echo "[build-kstatus] done in $(( $(date +%s) - start ))s" >&2
else
  echo "[build-kstatus] reusing $cache/kstatus" >&2
fi
echo "$cache/kstatus"
