#!/usr/bin/env bash
# Install (or reuse) checkov, the security scanner of the Kubernetes objects poolbench ships and creates
# (tests/test_security_scan.py), in its own virtualenv in the cache OUTSIDE the repository:
#   ${POOLBENCH_CACHE:-$HOME/.cache/poolbench}/checkov/<CHECKOV_VERSION>/
# Its own environment because checkov pins a large tree of its own (boto3, networkx, …) that has no
# place beside the project's dependencies. From PyPI with pip, pinned below.
#
# Contract: the LAST line on stdout is the checkov executable; everything else goes to stderr.
#   CHECKOV=$(hack/build-checkov.sh | tail -1)
set -euo pipefail
CHECKOV_VERSION=3.3.30
PY=${PYTHON:-python3}
cache="${POOLBENCH_CACHE:-$HOME/.cache/poolbench}/checkov/${CHECKOV_VERSION}"
mkdir -p "$(dirname "$cache")"
exec 9>"$(dirname "$cache")/.lock"
flock 9
# A virtualenv's scripts name its path, so it is built where it stays; .installed marks a finished one
# (an interrupted install is started again from nothing).
if [ ! -f "$cache/.installed" ]; then
  start=$(date +%s)
  echo "[build-checkov] installing checkov ${CHECKOV_VERSION} into $cache …" >&2
  rm -rf "$cache"
  "$PY" -m venv "$cache" >&2
  "$cache/bin/python" -m pip install --quiet --upgrade pip >&2
  "$cache/bin/python" -m pip install --quiet "checkov==${CHECKOV_VERSION}" >&2
  touch "$cache/.installed"
  echo "[build-checkov] done in $(( $(date +%s) - start ))s" >&2
else
  echo "[build-checkov] reusing $cache" >&2
fi
echo "$cache/bin/checkov"
