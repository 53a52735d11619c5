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

all_present() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x "${BIN_DIR}/$b" ]] || return 1; done
}

if all_present; then
  log "reusing ${BIN_DIR}"
  echo "${BIN_DIR}"
  exit 0
fi

# --- toolchain ---------------------------------------------------------------------
GO="${GO:-$(command -v go || true)}"
[[ -n "$GO" ]] || GO=/usr/local/go/bin/go
[[ -x "$GO" ]] || die "go not found (set GO=/path/to/go)"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"   # never silently download another toolchain
export CGO_ENABLED=0
export GOWORK=off                            # wrapper modules must not join a go.work
JOBS="${POOLBENCH_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"

mkdir -p "${VERSION_DIR}"
# Serialize concurrent invocations (e.g. parallel test sessions) on the same cache.
if command -v flock >/dev/null 2>&1; then
  exec 9>"${VERSION_DIR}/.lock"
  log "waiting for lock ${VERSION_DIR}/.lock"
  flock 9
  if all_present; then
    log "reusing ${BIN_DIR} (built by a concurrent invocation)"
    echo "${BIN_DIR}"
    exit 0
  fi
  # We hold the lock, so any work.* dir left here is from a killed build.
  rm -rf "${VERSION_DIR}"/work.*
fi

WORK="$(mktemp -d "${VERSION_DIR}/work.XXXXXX")"
OUT="${WORK}/out"   # same filesystem as BIN_DIR -> mv is an atomic rename
cleanup() { rm -rf "${WORK}"; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP   # make sure the EXIT trap runs on Ctrl-C / kill
mkdir -p "${OUT}" "${BIN_DIR}"
log "go: $("$GO" version) GOTOOLCHAIN=${GOTOOLCHAIN} -p ${JOBS}; work dir ${WORK}"

# json_field FILE KEY -> value of the first "KEY": "value" (string) in a JSON file
# (go's -json output or a proxy .info file); empty if absent. No jq needed.
json_field() { grep -o "\"$2\": *\"[^\"]*\"" "$1" | head -1 | sed 's/.*"\([^"]*\)"$/\1/'; }

# module_gomod LABEL MODULE@VERSION -> path of that release's own go.mod (downloaded via the proxy)
module_gomod() {
  local label=$1 target=$2 info="${WORK}/$1.json" gomod
  log "$label: fetching module $target (go mod download)"
  (cd "$WORK" && "$GO" mod download -json "$target") >"$info" \
    || { cat "$info" >&2; die "go mod download $target failed"; }
  gomod="$(json_field "$info" GoMod)"
  [[ -f "$gomod" ]] || die "could not locate go.mod of $target"
  printf '%s\n' "$gomod"
}

# copy_go_directives SRC_GOMOD -> prints the "go" line and any godebug lines/blocks,
# so the wrapper main module gets the same language version / GODEBUG defaults.
copy_go_directives() {
  awk '
    /^go [0-9]/ { print; next }
    /^godebug[ \t]*\($/ { inblk = 1; print; next }
    inblk { print; if ($0 ~ /^\)/) inblk = 0; next }
    /^godebug[ \t]/ { print }
  ' "$1"
}

# install_atomically NAME: move OUT/NAME into BIN_DIR via rename
install_atomically() {
  local b="$1"
  [[ -s "${OUT}/$b" ]] || die "build produced no ${OUT}/$b"
  chmod 0755 "${OUT}/$b"
  mv -f "${OUT}/$b" "${BIN_DIR}/$b"
  log "installed ${BIN_DIR}/$b ($(du -h "${BIN_DIR}/$b" | cut -f1))"
}

# --- kubernetes ------------------------------------------------------------------
build_kubernetes() {
  local t0=$SECONDS mod="${WORK}/kubernetes" info gomod staging_ver minor m
  local -a replaces=()
  mkdir -p "$mod"
  gomod="$(module_gomod kubernetes "k8s.io/kubernetes@${KUBERNETES_VERSION}")"
  info="${WORK}/kubernetes.json"  # module_gomod's download record: its .info gives the build date

  # Staging modules are published as v0.<minor>.<patch> for v1.<minor>.<patch>.
  staging_ver="v0.${KUBERNETES_VERSION#v1.}"
  minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"

  # Every "k8s.io/X => ./staging/..." replace in the release's own go.mod becomes
  # "k8s.io/X => k8s.io/X <staging_ver>". Only modules the release actually requires
  # are replaced (e.g. sample-controller is a staging dir but not required/published).
  while read -r m; do
    if grep -qE "^[[:space:]]*(require[[:space:]]+)?${m//./\\.}[[:space:]]+v" "$gomod"; then
      replaces+=("$m")
    else
      log "  skipping staging module $m (not required by k8s.io/kubernetes)"
    fi
  done < <(awk '/=>[ \t]*\.\/staging\// { if ($1 == "replace") print $2; else print $1 }' "$gomod" | sort -u)
  (( ${#replaces[@]} > 0 )) || die "found no ./staging replace directives in $gomod"
  log "  ${#replaces[@]} staging modules -> ${staging_ver}"

  {
    echo "module poolbench.local/build/kubernetes"
    echo
    copy_go_directives "$gomod"
    echo
    echo "require k8s.io/kubernetes ${KUBERNETES_VERSION}"
    echo
    echo "replace ("
    for m in "${replaces[@]}"; do printf '\t%s => %s %s\n' "$m" "$m" "$staging_ver"; done
    echo ")"
  } >"${mod}/go.mod"

  local -a pkgs=(k8s.io/kubernetes/cmd/kube-apiserver
                 k8s.io/kubernetes/cmd/kube-controller-manager
                 k8s.io/kubernetes/cmd/kube-scheduler)
  log "  resolving dependencies (go get)"
  (cd "$mod" && "$GO" get "${pkgs[@]/%/@${KUBERNETES_VERSION}}") >&2 \
    || die "go get for kubernetes failed"
  log "  dependencies resolved in $((SECONDS - t0))s"

  # Same variables hack/lib/version.sh sets, for both version packages.
  # buildDate = the tag's publish time from the proxy's .info (reproducible);
  # gitCommit only if the proxy recorded an Origin hash (it usually does not).
  local build_date commit infofile ldflags="-s -w" pkg
  infofile="$(json_field "$info" Info)"
  build_date="$( [[ -f "$infofile" ]] && json_field "$infofile" Time || true)"
  build_date="${build_date%%.*}"; build_date="${build_date%Z}"
  build_date="${build_date:-1970-01-01T00:00:00}Z"
  commit="$( [[ -f "$infofile" ]] && json_field "$infofile" Hash || true)"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${pkg}.gitVersion=${KUBERNETES_VERSION}"
    ldflags+=" -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${build_date}"
    [[ -z "$commit" ]] || ldflags+=" -X ${pkg}.gitCommit=${commit}"
  done

  local t1=$SECONDS
  log "  compiling kube-apiserver, kube-controller-manager, kube-scheduler (go build -p ${JOBS})"
  (cd "$mod" && "$GO" build -mod=mod -p "$JOBS" -trimpath -ldflags="$ldflags" -o "${OUT}/" "${pkgs[@]}") >&2 \
    || die "go build for kubernetes failed"
  log "  compiled in $((SECONDS - t1))s"
  for m in kube-apiserver kube-controller-manager kube-scheduler; do install_atomically "$m"; done
  log "kubernetes done in $((SECONDS - t0))s"
}

# --- etcd --------------------------------------------------------------------------
build_etcd() {
  local t0=$SECONDS mod="${WORK}/etcd" info gomod m sha
  local -a replaces=()
  mkdir -p "$mod"
  gomod="$(module_gomod etcd "go.etcd.io/etcd/server/v3@${ETCD_VERSION}")"
  info="${WORK}/etcd.json"  # module_gomod's download record: its .info gives the commit hash

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

  (cd "$mod" && "$GO" get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}") >&2 || die "go get for etcd failed"
  # Sanity: all go.etcd.io/etcd/* modules in the graph must be at ETCD_VERSION.
  local bad
  bad="$(cd "$mod" && "$GO" list -m all | awk -v v="$ETCD_VERSION" \
          '$1 ~ /^go\.etcd\.io\/etcd\// { ver = ($3 == "=>") ? $5 : $2; if (ver != v) print }')"
  [[ -z "$bad" ]] || die "etcd sibling modules not at ${ETCD_VERSION}: ${bad}"

  local ldflags="-s -w" infofile
  infofile="$(json_field "$info" Info)"
  sha="$( [[ -f "$infofile" ]] && json_field "$infofile" Hash || true)"
  # etcd's default GitSHA text says "use ./build"; record the commit, else the module tag.
  [[ -n "$sha" ]] && sha="${sha:0:9}" || sha="${ETCD_VERSION}-gomod"
  ldflags+=" -X go.etcd.io/etcd/api/v3/version.GitSHA=${sha}"
  local t1=$SECONDS
  log "  compiling etcd (go build -p ${JOBS})"
  (cd "$mod" && "$GO" build -mod=mod -p "$JOBS" -trimpath -ldflags="$ldflags" -o "${OUT}/etcd" go.etcd.io/etcd/server/v3) >&2 \
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

all_present || die "not all of ${BINARIES[*]} present in ${BIN_DIR} after build"
log "all binaries ready in ${BIN_DIR} (total $(( $(date +%s) - START_TS ))s)"
echo "${BIN_DIR}"
