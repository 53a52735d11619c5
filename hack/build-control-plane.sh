#!/usr/bin/env bash
# Build (or reuse) the real Kubernetes control-plane binaries for poolbench tests:
#   kube-apiserver, kube-controller-manager, kube-scheduler  (Go module k8s.io/kubernetes)
#   etcd                                                     (Go module go.etcd.io/etcd/server/v3)
#
# Versions come from hack/k8s-versions.env. Binaries go to a cache OUTSIDE the repo:
#   ${POOLBENCH_CACHE:-$HOME/.cache/poolbench}/k8s/<KUBERNETES_VERSION>-etcd<ETCD_VERSION>/bin
#
# If KUBEBUILDER_ASSETS points at a directory holding kube-apiserver and etcd
# (envtest convention), that directory is used as-is and nothing is built
# (note: envtest assets have no kube-controller-manager / kube-scheduler).
#
# Contract: the LAST line on stdout is the bin directory; everything else goes to stderr.
#   BIN=$(hack/build-control-plane.sh | tail -1)
#
# Optional env: POOLBENCH_CACHE, POOLBENCH_BUILD_JOBS (go build -p, default nproc),
#               GO (go binary), GOTOOLCHAIN (default: local).
# Shared build helpers: hack/lib/gobuild.sh (also used by hack/build-node.sh).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/k8s-versions.env
. "${SCRIPT_DIR}/k8s-versions.env"
: "${KUBERNETES_VERSION:?not set in k8s-versions.env}"
: "${ETCD_VERSION:?not set in k8s-versions.env}"

START_TS=$(date +%s)
log() { printf '[build-control-plane +%ss] %s\n' "$(( $(date +%s) - START_TS ))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- envtest-style prebuilt assets -------------------------------------------------
if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  if [[ -x "${KUBEBUILDER_ASSETS}/kube-apiserver" && -x "${KUBEBUILDER_ASSETS}/etcd" ]]; then
    log "using KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS} (building nothing)"
    for b in kube-controller-manager kube-scheduler; do
      [[ -x "${KUBEBUILDER_ASSETS}/$b" ]] || log "note: ${KUBEBUILDER_ASSETS} has no $b"
    done
    echo "${KUBEBUILDER_ASSETS}"
    exit 0
  fi
  log "KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS} lacks kube-apiserver and/or etcd; building instead"
fi

CACHE_ROOT="${POOLBENCH_CACHE:-$HOME/.cache/poolbench}"
VERSION_DIR="${CACHE_ROOT}/k8s/${KUBERNETES_VERSION}-etcd${ETCD_VERSION}"
BIN_DIR="${VERSION_DIR}/bin"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler etcd)

# --- toolchain, lock, work dir (hack/lib/gobuild.sh) -------------------------------
# shellcheck source=SCRIPTDIR/lib/gobuild.sh
. "${SCRIPT_DIR}/lib/gobuild.sh"
gobuild_reuse_if_present
gobuild_toolchain
gobuild_lock gobuild_all_present
gobuild_workdir

# --- kubernetes ------------------------------------------------------------------
build_kubernetes() {
  build_kubernetes_cmds together kube-apiserver kube-controller-manager kube-scheduler
}

# --- etcd --------------------------------------------------------------------------
build_etcd() {
  local t0=$SECONDS mod="${WORK}/etcd" gomod m sha
  local -a replaces=()
  mkdir -p "$mod"
  gomod="$(module_gomod etcd "go.etcd.io/etcd/server/v3@${ETCD_VERSION}")"

  # server/v3's go.mod replaces its sibling modules with "../api" etc. (ignored for a
  # dependency). Pin each sibling to the same tag so nothing drifts.
  while read -r m; do replaces+=("$m"); done < <(
    awk '/=>[ \t]*\.\.\// { if ($1 == "replace") print $2; else print $1 }' "$gomod" \
      | grep '^go\.etcd\.io/etcd/' | sort -u)
  {
    echo "module poolbench.local/build/etcd"
    echo
    copy_go_directives "$gomod"
    echo
    echo "require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}"
    if (( ${#replaces[@]} > 0 )); then
      echo
      echo "replace ("
      for m in "${replaces[@]}"; do printf '\t%s => %s %s\n' "$m" "$m" "$ETCD_VERSION"; done
      echo ")"
    fi
  } >"${mod}/go.mod"
  log "  pinned siblings to ${ETCD_VERSION}: ${replaces[*]:-none}"

  gorun "$mod" get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" >&2 || die "go get for etcd failed"
  # Sanity: all go.etcd.io/etcd/* modules in the graph must be at ETCD_VERSION.
  local bad
  bad="$(cd "$mod" && "$GO" list -m all | awk -v v="$ETCD_VERSION" \
          '$1 ~ /^go\.etcd\.io\/etcd\// { ver = ($3 == "=>") ? $5 : $2; if (ver != v) print }')"
  [[ -z "$bad" ]] || die "etcd sibling modules not at ${ETCD_VERSION}: ${bad}"

  local ldflags="-s -w"
  sha="$(module_info_field etcd Hash)"
  # etcd's default GitSHA text says "use ./build"; record the commit, else the module tag.
  [[ -n "$sha" ]] && sha="${sha:0:9}" || sha="${ETCD_VERSION}-gomod"
  ldflags+=" -X go.etcd.io/etcd/api/v3/version.GitSHA=${sha}"
  local t1=$SECONDS
  log "  compiling etcd (go build -p ${JOBS})"
  gorun "$mod" build -mod=mod -p "$JOBS" -trimpath -ldflags="$ldflags" -o "${OUT}/etcd" go.etcd.io/etcd/server/v3 >&2 \
    || die "go build for etcd failed"
  log "  compiled in $((SECONDS - t1))s"
  install_atomically etcd
  log "etcd done in $((SECONDS - t0))s"
}

# Build only what is missing (e.g. a previous run was interrupted after etcd).
need_k8s=0
for b in kube-apiserver kube-controller-manager kube-scheduler; do
  [[ -x "${BIN_DIR}/$b" ]] || need_k8s=1
done
[[ -x "${BIN_DIR}/etcd" ]] || build_etcd
(( need_k8s == 0 )) || build_kubernetes

gobuild_all_present || die "not all of ${BINARIES[*]} present in ${BIN_DIR} after build"
log "all binaries ready in ${BIN_DIR} (total $(( $(date +%s) - START_TS ))s)"
echo "${BIN_DIR}"
