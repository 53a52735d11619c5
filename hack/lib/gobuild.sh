# shellcheck shell=bash
# Shared helpers of hack/build-control-plane.sh and hack/build-node.sh: build pinned
# release binaries from Go modules (via the module proxy) into a cache outside the repo.
#
# Sourced, not run. The sourcing script defines log() and die() (both to stderr) and sets
#   VERSION_DIR  cache dir of this version set (holds .lock, work.*, bin/)
#   BIN_DIR      where finished binaries are installed (normally VERSION_DIR/bin)
#   BINARIES     (array) the names a complete build installs in BIN_DIR
# before calling gobuild_lock / gobuild_workdir. The helpers then set and use
#   GO, JOBS     (gobuild_toolchain)
#   WORK, OUT    (gobuild_workdir; OUT is on BIN_DIR's filesystem, so installing is a rename)
# Optional: GOBUILD_TIMES_FILE - if set, gobuild_record_time appends one line per build to it.

# gobuild_all_present: every name in BINARIES is an executable in BIN_DIR.
gobuild_all_present() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x "${BIN_DIR}/$b" ]] || return 1; done
}

# gobuild_reuse_if_present: when everything is built, print BIN_DIR (the contract's last
# stdout line) and exit 0; otherwise return and let the script build.
gobuild_reuse_if_present() {
  if gobuild_all_present; then
    log "reusing ${BIN_DIR}"
    echo "${BIN_DIR}"
    exit 0
  fi
}

# gobuild_toolchain: pick the go binary and a hermetic build environment.
gobuild_toolchain() {
  GO="${GO:-$(command -v go || true)}"
  [[ -n "$GO" ]] || GO=/usr/local/go/bin/go
  [[ -x "$GO" ]] || die "go not found (set GO=/path/to/go)"
  export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"   # never silently download another toolchain
  export CGO_ENABLED=0
  export GOWORK=off                            # wrapper modules must not join a go.work
  JOBS="${POOLBENCH_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
}

# gobuild_lock PRESENT_FN: serialize concurrent invocations (e.g. parallel test sessions)
# on the same cache. After waiting, if PRESENT_FN says everything is there, print BIN_DIR
# and exit 0 (another invocation built it). Exits the calling script in that case.
gobuild_lock() {
  local present_fn=$1
  mkdir -p "${VERSION_DIR}"
  command -v flock >/dev/null 2>&1 || return 0
  exec 9>"${VERSION_DIR}/.lock"
  log "waiting for lock ${VERSION_DIR}/.lock"
  flock 9
  if "$present_fn"; then
    log "reusing ${BIN_DIR} (built by a concurrent invocation)"
    echo "${BIN_DIR}"
    exit 0
  fi
  # We hold the lock, so any work.* dir left here is from a killed build.
  rm -rf "${VERSION_DIR}"/work.*
}

# gobuild_workdir: private work dir inside VERSION_DIR, removed on any exit
# (together with go's own temporary files: GOTMPDIR points into it).
gobuild_workdir() {
  WORK="$(mktemp -d "${VERSION_DIR}/work.XXXXXX")"
  OUT="${WORK}/out"   # same filesystem as BIN_DIR -> mv is an atomic rename
  trap gobuild_cleanup EXIT
  trap 'exit 130' INT TERM HUP   # make sure the EXIT trap runs on Ctrl-C / kill
  mkdir -p "${OUT}" "${BIN_DIR}" "${WORK}/tmp"
  export GOTMPDIR="${WORK}/tmp"
  log "go: $("$GO" version) GOTOOLCHAIN=${GOTOOLCHAIN} -p ${JOBS}; work dir ${WORK}"
}

GOBUILD_CHILD=""
# shellcheck disable=SC2317  # invoked via trap
gobuild_cleanup() {
  if [[ -n "${GOBUILD_CHILD}" ]] && kill -0 "${GOBUILD_CHILD}" 2>/dev/null; then
    log "stopping go (process group ${GOBUILD_CHILD})"
    kill -TERM -- "-${GOBUILD_CHILD}" 2>/dev/null || kill -TERM "${GOBUILD_CHILD}" 2>/dev/null || true
    wait "${GOBUILD_CHILD}" 2>/dev/null || true
  fi
  rm -rf "${WORK}"
}

# gorun DIR ARG...: run "$GO" ARG... in DIR (stdio as given to gorun), returning its status.
# go runs as a waited-for background job in its own process group: a foreground child would
# defer our INT/TERM/HUP trap until it ended (minutes for a go build), and a kill must also
# stop go's compile/link children. The EXIT trap (gobuild_cleanup) ends the group.
gorun() {
  local dir=$1 rc=0; shift
  if command -v setsid >/dev/null 2>&1; then
    (cd "$dir" && exec setsid -w "$GO" "$@") &
  else
    (cd "$dir" && exec "$GO" "$@") &
  fi
  GOBUILD_CHILD=$!
  wait "$GOBUILD_CHILD" || rc=$?
  GOBUILD_CHILD=""
  return "$rc"
}

# json_field FILE KEY -> value of the first "KEY": "value" (string) in a JSON file
# (go's -json output or a proxy .info file); empty if absent. No jq needed.
json_field() { grep -o "\"$2\": *\"[^\"]*\"" "$1" | head -1 | sed 's/.*"\([^"]*\)"$/\1/'; }

# module_gomod LABEL MODULE@VERSION -> path of that release's own go.mod (downloaded via the proxy).
# The download record (Dir, Info, GoMod, ...) stays in WORK/LABEL.json.
module_gomod() {
  local label=$1 target=$2 info="${WORK}/$1.json" gomod
  log "$label: fetching module $target (go mod download)"
  gorun "$WORK" mod download -json "$target" >"$info" \
    || { cat "$info" >&2; die "go mod download $target failed"; }
  gomod="$(json_field "$info" GoMod)"
  [[ -f "$gomod" ]] || die "could not locate go.mod of $target"
  printf '%s\n' "$gomod"
}

# module_info_field LABEL KEY -> KEY (Time, Hash, ...) of the proxy's .info of the module
# fetched by module_gomod LABEL; empty if unknown (the proxy rarely records Origin.Hash).
module_info_field() {
  local infofile
  infofile="$(json_field "${WORK}/$1.json" Info || true)"
  [[ -f "$infofile" ]] || return 0
  json_field "$infofile" "$2" || true
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

# gobuild_record_time NAME SECONDS [NOTE]: append a build-time record to GOBUILD_TIMES_FILE (if set).
gobuild_record_time() {
  [[ -n "${GOBUILD_TIMES_FILE:-}" ]] || return 0
  printf '%s\t%s\t%ss\tgo=%s\tjobs=%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" "$2" \
    "$("$GO" env GOVERSION)" "$JOBS" "${3:-}" >>"$GOBUILD_TIMES_FILE"
}

# --- kubernetes --------------------------------------------------------------------
# build_kubernetes_cmds MODE CMD...: build k8s.io/kubernetes/cmd/CMD at KUBERNETES_VERSION
# through a wrapper main module and install each into BIN_DIR.
#   MODE together: one `go build` for all CMDs (fastest overall), installed at the end.
#   MODE each:     one `go build` per CMD, each timed and installed as soon as it is built
#                  (later CMDs reuse the packages compiled for earlier ones).
build_kubernetes_cmds() {
  local mode=$1; shift
  local -a cmds=("$@") pkgs=() replaces=()
  local t0=$SECONDS mod="${WORK}/kubernetes" gomod staging_ver minor m c
  (( ${#cmds[@]} > 0 )) || die "build_kubernetes_cmds: no commands given"
  for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  mkdir -p "$mod"
  gomod="$(module_gomod kubernetes "k8s.io/kubernetes@${KUBERNETES_VERSION}")"

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

  log "  resolving dependencies (go get)"
  gorun "$mod" get "${pkgs[@]/%/@${KUBERNETES_VERSION}}" >&2 \
    || die "go get for kubernetes failed"
  log "  dependencies resolved in $((SECONDS - t0))s"

  # Same variables hack/lib/version.sh sets, for both version packages.
  # buildDate = the tag's publish time from the proxy's .info (reproducible);
  # gitCommit only if the proxy recorded an Origin hash (it usually does not).
  local build_date commit ldflags="-s -w" pkg
  build_date="$(module_info_field kubernetes Time)"
  build_date="${build_date%%.*}"; build_date="${build_date%Z}"
  build_date="${build_date:-1970-01-01T00:00:00}Z"
  commit="$(module_info_field kubernetes Hash)"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${pkg}.gitVersion=${KUBERNETES_VERSION}"
    ldflags+=" -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${build_date}"
    [[ -z "$commit" ]] || ldflags+=" -X ${pkg}.gitCommit=${commit}"
  done

  local t1=$SECONDS i
  case "$mode" in
    together)
      local names
      names="$(printf '%s, ' "${cmds[@]}")"; names="${names%, }"
      log "  compiling ${names} (go build -p ${JOBS})"
      gorun "$mod" build -mod=mod -p "$JOBS" -trimpath -ldflags="$ldflags" -o "${OUT}/" "${pkgs[@]}" >&2 \
        || die "go build for kubernetes failed"
      log "  compiled in $((SECONDS - t1))s"
      for c in "${cmds[@]}"; do install_atomically "$c"; done
      gobuild_record_time "${names}" "$((SECONDS - t1))" "compile only; go get $((t1 - t0))s"
      ;;
    each)
      for i in "${!cmds[@]}"; do
        c="${cmds[$i]}"; t1=$SECONDS
        log "  compiling $c (go build -p ${JOBS})"
        gorun "$mod" build -mod=mod -p "$JOBS" -trimpath -ldflags="$ldflags" -o "${OUT}/$c" "${pkgs[$i]}" >&2 \
          || die "go build for $c failed"
        log "  $c compiled in $((SECONDS - t1))s"
        install_atomically "$c"
        gobuild_record_time "$c" "$((SECONDS - t1))" "compile only"
      done
      ;;
    *) die "build_kubernetes_cmds: unknown mode '$mode' (together|each)" ;;
  esac
  log "kubernetes done in $((SECONDS - t0))s"
}
