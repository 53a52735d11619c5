#!/usr/bin/env bash
# Build (or reuse) the node binaries of the one-node Kubernetes cluster of poolbench tests:
#   kubelet, kube-proxy  (Go module k8s.io/kubernetes, cmd/kubelet and cmd/kube-proxy)
#   coredns              (Go module github.com/coredns/coredns, only the plugins a cluster
#                         DNS without forwarding needs: kubernetes yes, forward NO)
#
# Versions come from hack/k8s-versions.env (KUBERNETES_VERSION, COREDNS_VERSION). Binaries go
# to a cache OUTSIDE the repo:
#   ${POOLBENCH_CACHE:-$HOME/.cache/poolbench}/node/<KUBERNETES_VERSION>-coredns<COREDNS_VERSION>/bin
# Only missing binaries are built; each build's time is logged and appended to
#   .../node/<...>/build-times.tsv   (date, binary, seconds, go version, -p jobs, note)
#
# Contract: the LAST line on stdout is the bin directory; everything else goes to stderr.
#   BIN=$(hack/build-node.sh | tail -1)
#
# Optional env: POOLBENCH_CACHE, POOLBENCH_BUILD_JOBS (go build -p, default nproc),
#               GO (go binary), GOTOOLCHAIN (default: local).
# Shared build helpers: hack/lib/gobuild.sh (also used by hack/build-control-plane.sh).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/k8s-versions.env
. "${SCRIPT_DIR}/k8s-versions.env"
: "${KUBERNETES_VERSION:?not set in k8s-versions.env}"
: "${COREDNS_VERSION:?not set in k8s-versions.env}"

START_TS=$(date +%s)
log() { printf '[build-node +%ss] %s\n' "$(( $(date +%s) - START_TS ))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

CACHE_ROOT="${POOLBENCH_CACHE:-$HOME/.cache/poolbench}"
VERSION_DIR="${CACHE_ROOT}/node/${KUBERNETES_VERSION}-coredns${COREDNS_VERSION}"
BIN_DIR="${VERSION_DIR}/bin"
BINARIES=(kubelet kube-proxy coredns)

# CoreDNS plugins compiled in (names as in CoreDNS's plugin.cfg; their execution order is
# taken from the release's plugin.cfg, not from this list). What a cluster DNS without
# forwarding uses, plus: bind (the tests' Corefile binds the bridge address), prometheus
# (kubeadm's default Corefile has it), metadata and transfer (imported by kubernetes anyway)
# and whoami (CoreDNS's built-in default Corefile when started without -conf).
# Deliberately absent: forward (pods must never reach the machine's own resolver).
# Changing this list does not change the cache path: delete the cached coredns to rebuild.
COREDNS_PLUGINS=(metadata reload bind ready health prometheus errors log loadbalance cache
                 transfer kubernetes loop whoami)
COREDNS_FORBIDDEN_PLUGINS=(forward)

# --- toolchain, lock, work dir (hack/lib/gobuild.sh) -------------------------------
# shellcheck source=SCRIPTDIR/lib/gobuild.sh
. "${SCRIPT_DIR}/lib/gobuild.sh"
gobuild_reuse_if_present
gobuild_toolchain
gobuild_lock gobuild_all_present
gobuild_workdir
GOBUILD_TIMES_FILE="${VERSION_DIR}/build-times.tsv"

# --- coredns -----------------------------------------------------------------------
# A wrapper main package in the style of CoreDNS's own coredns.go, but instead of importing
# core/plugin (all plugins, zplugin.go) it blank-imports only the chosen plugin packages and
# sets dnsserver.Directives (what zdirectives.go generates) to them: CoreDNS's documented
# way to make a custom build with CoreDNS as a dependency.
build_coredns() {
  local t0=$SECONDS mod="${WORK}/coredns" gomod dir name path p sha
  local -a directives=() imports=() pkgs=()
  mkdir -p "$mod"
  gomod="$(module_gomod coredns "github.com/coredns/coredns@${COREDNS_VERSION}")"
  dir="$(json_field "${WORK}/coredns.json" Dir || true)"
  [[ -f "${dir}/plugin.cfg" ]] || die "no plugin.cfg in the coredns module (${dir:-no Dir})"

  for p in "${COREDNS_FORBIDDEN_PLUGINS[@]}"; do
    [[ " ${COREDNS_PLUGINS[*]} " != *" $p "* ]] || die "COREDNS_PLUGINS must not contain $p"
  done
  # plugin.cfg: "name:package" per line in execution order; a package without a slash
  # lives in github.com/coredns/coredns/plugin/ (exactly what directives_generate.go reads).
  while IFS=: read -r name path; do
    name="${name//[[:space:]]/}"; path="${path%%#*}"; path="${path//[[:space:]]/}"
    [[ -n "$name" && "$name" != \#* && -n "$path" ]] || continue
    [[ " ${COREDNS_PLUGINS[*]} " == *" $name "* ]] || continue
    directives+=("$name")
    [[ "$path" == */* ]] || path="github.com/coredns/coredns/plugin/${path}"
    [[ " ${imports[*]} " == *" $path "* ]] || imports+=("$path")
  done <"${dir}/plugin.cfg"
  for p in "${COREDNS_PLUGINS[@]}"; do
    [[ " ${directives[*]} " == *" $p "* ]] || die "plugin $p is not in coredns ${COREDNS_VERSION}'s plugin.cfg"
  done
  log "  plugins (execution order): ${directives[*]}"

  {
    echo "module poolbench.local/build/coredns"
    echo
    copy_go_directives "$gomod"
    echo
    echo "require github.com/coredns/coredns ${COREDNS_VERSION}"
    # Replace directives of a dependency are ignored: carry over the non-local ones.
    awk '
      /^replace[ \t]*\($/ { inblk = 1; next }
      inblk && /^\)/ { inblk = 0; next }
      inblk { sub(/^[ \t]+/, ""); if ($0 != "" && $0 !~ /=>[ \t]*\.\.?\//) print "replace " $0; next }
      /^replace[ \t]/ { if ($0 !~ /=>[ \t]*\.\.?\//) print }
    ' "$gomod"
  } >"${mod}/go.mod"

  {
    echo "// Code generated by hack/build-node.sh; DO NOT EDIT."
    echo "// CoreDNS ${COREDNS_VERSION} with only the plugins poolbench's cluster DNS needs."
    echo
    echo "package main"
    echo
    echo "import ("
    printf '\t"github.com/coredns/coredns/core/dnsserver"\n'
    printf '\t"github.com/coredns/coredns/coremain"\n'
    echo
    for p in "${imports[@]}"; do printf '\t_ "%s"\n' "$p"; done
    echo ")"
    echo
    echo "// Execution order, as in the release's plugin.cfg."
    echo "var directives = []string{"
    for p in "${directives[@]}"; do printf '\t"%s",\n' "$p"; done
    echo "}"
    echo
    echo "func init() { dnsserver.Directives = directives }"
    echo
    echo "func main() { coremain.Run() }"
  } >"${mod}/main.go"

  pkgs=(github.com/coredns/coredns/coremain github.com/coredns/coredns/core/dnsserver)
  for p in "${imports[@]}"; do
    [[ "$p" != github.com/coredns/coredns/* ]] || pkgs+=("$p")
  done
  log "  resolving dependencies (go get)"
  gorun "$mod" get "${pkgs[@]/%/@${COREDNS_VERSION}}" >&2 || die "go get for coredns failed"
  log "  dependencies resolved in $((SECONDS - t0))s"

  # As CoreDNS's Makefile: GitCommit (shown by -version); the commit if the proxy knows it.
  local ldflags="-s -w"
  sha="$(module_info_field coredns Hash)"
  [[ -n "$sha" ]] && sha="${sha:0:9}" || sha="${COREDNS_VERSION}-gomod"
  ldflags+=" -X github.com/coredns/coredns/coremain.GitCommit=${sha}"
  local t1=$SECONDS
  log "  compiling coredns (go build -p ${JOBS})"
  gorun "$mod" build -mod=mod -p "$JOBS" -trimpath -ldflags="$ldflags" -o "${OUT}/coredns" . >&2 \
    || die "go build for coredns failed"
  log "  coredns compiled in $((SECONDS - t1))s"

  # Check the plugin set of what was built before installing it (-plugins only prints).
  local listed
  listed="$("${OUT}/coredns" -plugins)" || die "coredns -plugins failed"
  for p in "${directives[@]}"; do
    grep -qE "^[[:space:]]*(dns\.)?${p}\$" <<<"$listed" || die "built coredns lacks plugin $p"
  done
  for p in "${COREDNS_FORBIDDEN_PLUGINS[@]}"; do
    ! grep -qE "^[[:space:]]*(dns\.)?${p}\$" <<<"$listed" || die "built coredns has plugin $p"
  done
  install_atomically coredns
  gobuild_record_time coredns "$((SECONDS - t1))" "compile only; go get $((t1 - t0))s"
  log "coredns done in $((SECONDS - t0))s"
}

# Build only what is missing (e.g. a previous run was interrupted after kubelet).
missing_k8s=()
for b in kubelet kube-proxy; do
  [[ -x "${BIN_DIR}/$b" ]] || missing_k8s+=("$b")
done
(( ${#missing_k8s[@]} == 0 )) || build_kubernetes_cmds each "${missing_k8s[@]}"
[[ -x "${BIN_DIR}/coredns" ]] || build_coredns

gobuild_all_present || die "not all of ${BINARIES[*]} present in ${BIN_DIR} after build"
log "all binaries ready in ${BIN_DIR} (total $(( $(date +%s) - START_TS ))s)"
echo "${BIN_DIR}"
