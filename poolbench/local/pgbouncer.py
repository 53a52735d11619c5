"""Real PgBouncer processes for a pooled variant (the local platform's pooler).

PgBouncer is a C program with no wheel: it comes from the system (Debian's ``pgbouncer`` package),
found on PATH or in the sbin directories. It refuses to run as root, so as root it runs as the same
unprivileged system user as the embedded server. Each instance gets its own port on loopback; the
configuration and auth file are generated (``poolbench.core.pooler``) into a private directory
removed on the way out, with every process, Ctrl-C included. The replicas get every instance's
address and place each new connection on one at random, as a Kubernetes Service does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg2
import psycopg2.extensions

from ..core.contracts.replica_env import POOLER_HOSTS_ENV, render_pooler_hosts
from ..core.pooler import ADMIN_DATABASE, ADMIN_USER, pgbouncer_ini, userlist
from ..core.spec import PoolerSpec
from .access import ensure_system_user, reachable_run_base, run_as_kwargs, user_ids
from .errors import EnvironmentFailure
from .procs import deferred_signals, free_port, kill_group, spawn, temp_dir

SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
READY_SECONDS = 15.0
SAFE_STOP_SECONDS = 1.0  # SIGINT's safe shutdown, before SIGTERM's immediate one


def find_pgbouncer() -> str:
    """The pgbouncer binary, or an EnvironmentFailure that names the package to install."""
    given = os.environ.get("POOLBENCH_PGBOUNCER")
    if given:
        if not os.access(given, os.X_OK) or os.path.isdir(given):
            raise EnvironmentFailure(f"POOLBENCH_PGBOUNCER={given} is not an executable pgbouncer")
        return given
    path = shutil.which("pgbouncer")
    if not path:
        path = next(
            (str(Path(d) / "pgbouncer") for d in SEARCH_DIRS if os.access(Path(d) / "pgbouncer", os.X_OK)), None
        )
    if not path or not os.access(path, os.X_OK):
        raise EnvironmentFailure(
            "a variant uses PgBouncer, but no pgbouncer binary was found (PATH, /usr/sbin, /usr/local/sbin, or"
            " POOLBENCH_PGBOUNCER): install the 'pgbouncer' package (Debian/Ubuntu: apt-get install pgbouncer;"
            " scripts/setup does it as root)"
        )
    return path


class LocalPgBouncer:
    """``pooler.replicas`` PgBouncer processes in front of one server, each on its own port."""

    def __init__(
        self, pooler: PoolerSpec, *, server_host: str, server_port: int, database: str, passwords: dict[str, str]
    ):
        self.pooler = pooler
        self.server_host, self.server_port, self.database = server_host, server_port, database
        self.admin_password = passwords[ADMIN_USER] if ADMIN_USER in passwords else os.urandom(18).hex()
        self.passwords = {**passwords, ADMIN_USER: self.admin_password}
        self.host = "127.0.0.1"
        self.ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.root: Path | None = None
        self.run_as: str | None = None

    def start(self) -> LocalPgBouncer:
        """Start every instance and wait until each answers on its admin console. Whatever fails,
        nothing is left behind."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        binary = find_pgbouncer()
        if os.geteuid() == 0:
            self.run_as = ensure_system_user()
        uid, gid = user_ids(self.run_as)
        base = reachable_run_base(uid, gid) if self.run_as else None
        with deferred_signals():
            self.root = temp_dir("poolbench-pgbouncer-", base)
        if self.run_as:
            os.chown(self.root, uid, gid)
        auth = self.root / "userlist.txt"
        auth.write_text(userlist(self.passwords))
        os.chmod(auth, 0o600)
        if self.run_as:
            os.chown(auth, uid, gid)
        for i in range(self.pooler.replicas):
            port = free_port()
            ini = self.root / f"pgbouncer-{i}.ini"
            ini.write_text(
                pgbouncer_ini(
                    self.pooler,
                    server_host=self.server_host,
                    server_port=self.server_port,
                    database=self.database,
                    listen_addr=self.host,
                    listen_port=port,
                    auth_file=str(auth),
                )
            )
            log = open(self.root / f"pgbouncer-{i}.log", "ab")  # noqa: SIM115 - closed once the child has it
            try:
                with deferred_signals():
                    self.processes.append(
                        spawn(
                            [binary, str(ini)],
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL,
                            **run_as_kwargs(self.run_as),
                        )
                    )
            except OSError as err:
                raise EnvironmentFailure(f"could not run {binary}: {err}") from None
            finally:
                log.close()
            self.ports.append(port)
        for i in range(len(self.processes)):
            self._wait_ready(i)

    def _wait_ready(self, i: int) -> None:
        deadline = time.monotonic() + READY_SECONDS
        last = ""
        while time.monotonic() < deadline:
            if self.processes[i].poll() is not None:
                raise EnvironmentFailure(
                    f"pgbouncer exited at start (code {self.processes[i].returncode}): {self.log_tail(i)}"
                )
            try:
                self.admin_connect(i).close()
                return
            except psycopg2.OperationalError as err:
                last = " ".join(str(err).split())
                time.sleep(0.05)
        raise EnvironmentFailure(f"pgbouncer did not answer within {READY_SECONDS:.0f}s ({last}): {self.log_tail(i)}")

    def log_tail(self, i: int, lines: int = 5) -> str:
        if self.root is None:
            return ""
        path = self.root / f"pgbouncer-{i}.log"
        try:
            return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""

    def log_text(self) -> str:
        """Every instance's log (for tests and the --debug story)."""
        if self.root is None:
            return ""
        return "".join(p.read_text(errors="replace") for p in sorted(self.root.glob("pgbouncer-*.log")))

    def admin_connect(self, i: int) -> psycopg2.extensions.connection:
        return psycopg2.connect(
            host=self.host,
            port=self.ports[i],
            user=ADMIN_USER,
            password=self.admin_password,
            dbname=ADMIN_DATABASE,
            connect_timeout=5,
        )

    def client_env(self) -> dict[str, str]:
        """The workload's variables for these instances: each new connection picks one at random (as a
        Kubernetes Service places each connection), PGHOST/PGPORT name the first for anything else."""
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.ports[0]),
            POOLER_HOSTS_ENV: render_pooler_hosts([(self.host, port) for port in self.ports]),
        }

    def stop(self) -> None:
        """Stop every instance and remove the directory. Safe to call twice; runs to its end whatever
        signal arrives meanwhile.

        SIGINT, PgBouncer's safe shutdown, ends an instance whose clients are gone within its next
        janitor pass (a quarter of a second). One still waiting for a client gets SIGTERM: the immediate
        shutdown before PgBouncer 1.23, and from 1.23 on a second signal during a shutdown makes it
        immediate. SIGKILL is only for an instance that ignores both."""
        with deferred_signals():
            processes, self.processes = self.processes, []
            for sig, grace in ((signal.SIGINT, SAFE_STOP_SECONDS), (signal.SIGTERM, 5.0)):
                for proc in processes:
                    if proc.poll() is None:
                        kill_group(proc.pid, sig)
                deadline = time.monotonic() + grace
                for proc in processes:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(max(deadline - time.monotonic(), 0.0))
            for proc in processes:
                if proc.poll() is None:
                    kill_group(proc.pid)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(5)
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None
