"""The local platform: the benchmark on an embedded PostgreSQL with replicas as local processes.

``LocalRunner`` sets up the server, the replica launcher and the monitor (``poolbench.db.monitor``),
then hands the run to the core's step loop (``poolbench.core.steploop``), implementing its
``Platform`` with processes: scale starts N replicas, observe reads their summaries, collect stops
them and reads their reports, and a server that died is restarted on the same data directory as a
StatefulSet would. Every process it starts and the temporary directories are removed on the way
out, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from ..clock import utc_now
from ..core.benchmark import BenchmarkRun, PlannedStep, ReplicaReport
from ..core.compat import ClientTarget
from ..core.contracts.phases import WORK_OVER
from ..core.contracts.replica_env import APP_NAME_ENV, SUMMARY_PATH_ENV
from ..core.contracts.summary import ReplicaSummary
from ..core.results import BenchmarkStatus
from ..core.sampling import Sample
from ..core.spec import PoolBenchmark
from ..core.steploop import (
    LoopEvent,
    LoopTiming,
    PoolerConsole,
    Progress,
    ReplicaProgress,
    StepFinished,
    StepStarted,
    run_steps,
)
from ..core.timeline import WindowAccount
from ..core.workload_env import DATABASE, PROVIDER_ADMIN_ROLE, SUPERUSER, local_role, workload_env
from ..db.monitor import Monitor
from ..db.roles import ensure_role
from .embedded import EnvironmentFailure, LocalPostgres
from .launcher import LAUNCHER_ENV, ForkedProcess, ReplicaLauncher
from .logtail import LogFile
from .pgbouncer import LocalPgBouncer, find_pgbouncer
from .procs import deferred_signals, kill_group, spawn, temp_dir

TIMING = LoopTiming(poll_seconds=0.05, drain_seconds=5.0)


@dataclass
class StepSpan:
    index: int
    replicas: int
    start: float
    end: float | None = None
    variant: str = ""  # with spec.variants: the variant the step belongs to


@dataclass
class LocalResult:
    status: BenchmarkStatus
    timeline: list[Sample] = field(default_factory=list)
    spans: list[StepSpan] = field(default_factory=list)
    #: The exact count of open client backends from the server's log, (seconds, count) after each change
    #: within each step read from the log; and each such step's account (its refusals for the plot).
    server_points: list[tuple[float, int]] = field(default_factory=list)
    server_accounts: list[WindowAccount] = field(default_factory=list)


def app_prefix(name: str) -> str:
    return f"pb-{name}-"


class ReplicaProcess:
    """One workload replica as a local process (forked by the launcher, or ``python -m workload``)."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path, launcher: ReplicaLauncher | None = None):
        self.name = name
        self.summary_path = workdir / f"{name}.json"
        self.log_path = workdir / f"{name}.log"
        self.stopped_by_runner = False  # killed at the end of its step (a timeout), not crashed
        env = {**env, APP_NAME_ENV: name, SUMMARY_PATH_ENV: str(self.summary_path)}
        forked = launcher.spawn(env, self.log_path) if launcher is not None else None
        self.proc: subprocess.Popen[bytes] | ForkedProcess
        if forked is not None:
            self.proc = forked
            return
        with open(self.log_path, "wb") as log:
            self.proc = spawn(
                [sys.executable, "-m", "workload"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def summary(self) -> ReplicaSummary | None:
        try:
            text = self.summary_path.read_text()
        except (OSError, ValueError):  # not there yet, or not text
            return None
        return ReplicaSummary.parse(text)

    def work_done(self) -> bool:
        if self.proc.poll() is not None:
            return True
        s = self.summary()
        return s is not None and s.phase in WORK_OVER

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.stopped_by_runner = True
            kill_group(self.proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL: the kernel owes us this one
            self.proc.wait(5)

    def report(self) -> ReplicaReport:
        # The runner's own SIGKILL (the step timed out) is not the replica's crash: the step says timeout.
        code = None if self.stopped_by_runner else self.proc.poll()
        report = ReplicaReport.from_summary(self.name, self.summary(), exit_code=code)
        if code not in (0, None) and not report.first_error:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] if self.log_path.exists() else []
            report.first_error = f"exit code {code}" + (f": {tail[0][:200]}" if tail else "")
            report.outcomes.setdefault("other", 1)
        return report


class LocalRunner:
    """Sets up the local platform, runs the step loop on it, and removes everything afterwards."""

    keeps_last_step = False  # local replicas never outlive their step

    def __init__(self, bench: PoolBenchmark, progress: Callable[[Progress], None] | None = None):
        self.bench = bench
        self.spec = bench.spec
        self.run = BenchmarkRun(bench.spec, clock=utc_now)
        self.progress = progress or (lambda p: None)
        self.result = LocalResult(status=self.run.status)
        self.replicas: list[ReplicaProcess] = []
        self.pg: LocalPostgres | None = None
        self.launcher: ReplicaLauncher | None = None
        self.monitor: Monitor | None = None
        self.workdir: Path | None = None
        self.env: dict[str, str] = {}
        self.base_env: dict[str, str] = {}  # the server's env, before any variant's settings
        self.variant_env: dict[str, str] = {}  # the current variant's replica environment
        self.bouncer: LocalPgBouncer | None = None
        self.login = local_role(bench.spec)  # never a superuser when a provider is mimicked
        self.t0 = time.monotonic()

    def execute(self) -> LocalResult:
        try:
            if any(v.pooler is not None for v in self.run.variants):
                find_pgbouncer()  # before anything starts: say which package is missing
            self.run.provisioning()
            with deferred_signals():
                self.workdir = temp_dir("poolbench-run-")
            if os.environ.get(LAUNCHER_ENV, "").lower() not in ("off", "0", "false", "no"):
                self.launcher = ReplicaLauncher()
                self.launcher.start()  # it imports the workload while PostgreSQL starts
            pg_spec = self.spec.postgres
            superuser_reserved, reserved = pg_spec.server_reserved()  # a provider's server refuses where it would
            self.pg = pg = LocalPostgres(
                pg_spec.max_connections, superuser_reserved, dict(pg_spec.settings), reserved_connections=reserved
            )
            pg.start()
            self.env = {**os.environ, **workload_env(self.spec), **pg.client_env(), "PGUSER": self.login}

            def connect(**extra: Any) -> psycopg2.extensions.connection:
                conn: psycopg2.extensions.connection = psycopg2.connect(
                    **pg.connect_kwargs(), connect_timeout=5, **extra
                )
                return conn

            if self.login != SUPERUSER:
                self.env["PGPASSWORD"] = password = secrets.token_urlsafe(24)
                ensure_role(connect, self.login, password, use_reserved=self.login == PROVIDER_ADMIN_ROLE)
            self.base_env = dict(self.env)
            self.monitor = Monitor(
                connect,
                self.spec.sampling.interval_ms / 1000,
                self.t0,
                timeline=self.result.timeline,
                log=LogFile(pg.log_path),
            )
            self.result.server_points = self.monitor.server_points  # filled step by step
            self.result.server_accounts = self.monitor.accounts
            self.monitor.start()  # before any load: the monitor must hold its slot first
            run_steps(self.run, self, self.monitor, TIMING)
        except EnvironmentFailure as err:
            self.run.fail(str(err))
            raise
        finally:
            with deferred_signals():  # the way out runs to its end; a signal meanwhile is acted on after it
                self.kill_replicas()  # first: a pooler with no client left stops at once
                if self.monitor is not None:
                    self.monitor.stop()
                self.stop_pooler()
                self.cleanup()
        return self.result

    # -- the step loop's Platform -------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def use_variant(self, planned: PlannedStep) -> Sequence[PoolerConsole]:
        """Point the replicas at the variant's PgBouncer (started here, the previous one stopped) or
        straight at the server, with the variant's engine."""
        self.stop_pooler()
        index = planned.variant_index
        spec = self.run.variant_specs[index]
        env = {**self.base_env, **workload_env(spec, pooler=planned.pooler), "PGUSER": self.login}
        if planned.pooler is None or self.pg is None:
            self.variant_env = env
            return []
        pg = self.pg
        role = self.login
        password = env.get("PGPASSWORD") or secrets.token_urlsafe(24)  # the superuser logs in to the server by trust
        with deferred_signals():
            self.bouncer = bouncer = LocalPgBouncer(
                planned.pooler, server_host=pg.host, server_port=pg.port, database=DATABASE, passwords={role: password}
            )
        bouncer.start()
        self.variant_env = {**env, **bouncer.client_env(), "PGPASSWORD": password}  # every instance, at random
        return [functools.partial(bouncer.admin_connect, i) for i in range(planned.pooler.replicas)]

    def probe_target(self, planned: PlannedStep) -> ClientTarget | None:
        """The app's login at the variant's first PgBouncer instance."""
        bouncer = self.bouncer
        if planned.pooler is None or bouncer is None:
            return None
        password = self.variant_env.get("PGPASSWORD")
        return ClientTarget(bouncer.host, bouncer.ports[0], self.login, DATABASE, password)

    def stop_pooler(self) -> None:
        bouncer, self.bouncer = self.bouncer, None
        if bouncer is not None:
            bouncer.stop()

    def scale(self, planned: PlannedStep) -> None:
        assert self.workdir is not None
        variant = f"{planned.tag}-" if planned.tag else ""
        prefix = f"{app_prefix(self.bench.name)}{variant}s{planned.index}-r"
        env = self.variant_env or self.env
        for i in range(len(self.replicas), planned.replicas):
            with deferred_signals():
                self.replicas.append(ReplicaProcess(f"{prefix}{i}", env, self.workdir, self.launcher))

    def observe(self, expected: int) -> ReplicaProgress:
        running = sum(1 for r in self.replicas if r.proc.poll() is None)
        work_done = all(r.work_done() for r in self.replicas)
        return ReplicaProgress(running=running, work_done=work_done, finished=running == 0)

    def replica_names(self) -> list[str]:
        return [r.name for r in self.replicas]

    def collect(self) -> list[ReplicaReport]:
        replicas = self.replicas
        self.kill_replicas()  # a replica still running at the end of its step is stopped first
        return [r.report() for r in replicas]

    def scale_to_zero(self) -> None:
        self.kill_replicas()

    def recover_database(self) -> bool:
        if self.pg is None or not self.pg.died():
            return False
        self.pg.restart()  # same data directory and port: the app role is still there
        return True

    def database_restarted(self) -> None:
        pass

    def notify(self, event: LoopEvent) -> None:
        if isinstance(event, Progress):
            self.progress(event)
        elif isinstance(event, StepStarted):
            planned = event.planned
            self.result.spans.append(StepSpan(planned.index, planned.replicas, self.now(), variant=planned.tag))
        elif isinstance(event, StepFinished) and self.result.spans:
            self.result.spans[-1].end = self.now()

    # -- the way out ----------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Kill every replica, stop the pooler and the server, remove the temporary directories.
        Idempotent; runs to its end whatever signal arrives meanwhile."""
        with deferred_signals():
            self._cleanup()

    def kill_replicas(self) -> None:
        for r in self.replicas:
            r.kill()
        self.replicas = []

    def _cleanup(self) -> None:
        self.kill_replicas()
        self.stop_pooler()
        if self.launcher is not None:
            self.launcher.close()
        if self.pg is not None:
            self.pg.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def run_local(bench: PoolBenchmark, progress: Callable[[Progress], None] | None = None) -> LocalResult:
    return LocalRunner(bench, progress).execute()
