"""The local runner: the benchmark on an embedded PostgreSQL with replicas as local processes.

It drives the same core as the operator (poolbench.benchmark); only the platform differs. Every
process it starts and the temporary directories are removed on the way out, Ctrl-C included.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
from psycopg2 import sql

from .benchmark import BenchmarkRun, PlannedStep, ReplicaReport
from .launcher import LAUNCHER_ENV, ForkedProcess, ReplicaLauncher
from .localpg import EnvironmentFailure, LocalPostgres, deferred_signals, kill_group
from .probe import Probe, SamplerThread
from .results import BenchmarkStatus
from .sampling import Sample
from .spec import PoolBenchmark
from .workload_env import APP_ROLE, workload_env

DRAIN_SECONDS = 5.0
POLL_SECONDS = 0.05


@dataclass
class Progress:
    step: int
    total_steps: int
    replicas: int
    elapsed: float
    step_elapsed: float
    live: int
    peak: int
    running: int
    phase: str


@dataclass
class StepSpan:
    index: int
    replicas: int
    start: float
    end: float | None = None


@dataclass
class LocalResult:
    status: BenchmarkStatus
    timeline: list[Sample] = field(default_factory=list)
    spans: list[StepSpan] = field(default_factory=list)


def app_prefix(name: str) -> str:
    return f"pb-{name}-"


def create_app_role(pg: LocalPostgres) -> str:
    """The non-superuser role for ``role: app``; returns its password."""
    password = secrets.token_urlsafe(24)
    conn = psycopg2.connect(**pg.connect_kwargs())
    conn.autocommit = True
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER PASSWORD %s").format(sql.Identifier(APP_ROLE)),
            (password,),
        )
    conn.close()
    return password


class ReplicaProcess:
    """One workload replica as a local process (forked by the launcher, or ``python -m workload``)."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path, launcher: "ReplicaLauncher | None" = None):
        self.name = name
        self.summary_path = workdir / f"{name}.json"
        self.log_path = workdir / f"{name}.log"
        env = {**env, "POOLBENCH_APP_NAME": name, "POOLBENCH_SUMMARY_PATH": str(self.summary_path)}
        forked = launcher.spawn(env, self.log_path) if launcher is not None else None
        if forked is not None:
            self.proc: subprocess.Popen | ForkedProcess = forked
            return
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workload"], env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def summary(self) -> dict | None:
        try:
            return json.loads(self.summary_path.read_text())
        except (OSError, ValueError):
            return None

    def work_done(self) -> bool:
        if self.proc.poll() is not None:
            return True
        s = self.summary()
        return bool(s and s.get("phase") in ("holding", "done", "crashed"))

    def kill(self) -> None:
        if self.proc.poll() is None:
            kill_group(self.proc.pid)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover - the kernel owes us this one
            pass

    def report(self) -> ReplicaReport:
        code = self.proc.poll()
        report = ReplicaReport.from_summary(self.name, self.summary(), exit_code=code)
        if code not in (0, None) and not report.first_error:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] if self.log_path.exists() else []
            report.first_error = f"exit code {code}" + (f": {tail[0][:200]}" if tail else "")
            report.outcomes.setdefault("other", 1)
        return report


class LocalRunner:
    def __init__(self, bench: PoolBenchmark, progress: Callable[[Progress], None] | None = None):
        self.bench = bench
        self.spec = bench.spec
        self.run = BenchmarkRun(bench.spec)
        self.progress = progress or (lambda p: None)
        self.lock = threading.Lock()
        self.result = LocalResult(status=self.run.status)
        self.replicas: list[ReplicaProcess] = []
        self.pg: LocalPostgres | None = None
        self.launcher: ReplicaLauncher | None = None
        self.workdir: Path | None = None
        self.t0 = time.monotonic()
        self.last_sample: Sample | None = None

    def _sink(self, sample: Sample) -> None:
        with self.lock:
            self.result.timeline.append(sample)
            self.last_sample = sample
            self.run.add_sample(sample)

    def execute(self) -> LocalResult:
        sampler: SamplerThread | None = None
        probe: Probe | None = None
        try:
            self.run.provisioning()
            with deferred_signals():
                self.workdir = Path(tempfile.mkdtemp(prefix="poolbench-run-"))
            if os.environ.get(LAUNCHER_ENV, "").lower() not in ("off", "0", "false", "no"):
                self.launcher = ReplicaLauncher()
                self.launcher.start()  # it imports the workload while PostgreSQL starts
            pg_spec = self.spec.postgres
            self.pg = LocalPostgres(pg_spec.max_connections, pg_spec.superuser_reserved_connections,
                                    dict(pg_spec.settings))
            self.pg.start()
            env = {**os.environ, **workload_env(self.spec), **self.pg.client_env()}
            if self.spec.workload.role == "app":
                env["PGPASSWORD"] = create_app_role(self.pg)
            pg = self.pg
            probe = Probe(lambda: psycopg2.connect(**pg.connect_kwargs(), connect_timeout=5),
                          app_prefix(self.bench.name))
            probe.open()  # before any load: the monitor must hold its slot first
            sampler = SamplerThread(probe, self.spec.sampling.interval_ms / 1000, self._sink, self.t0)
            sampler.start()
            for planned in iter(self.run.next_step, None):
                if self.pg.died():  # between steps: recover before the next load
                    self.pg.restart()
                self._run_step(planned, env)
            with self.lock:
                self.run.finish()
        except EnvironmentFailure as err:
            with self.lock:
                self.run.fail(str(err))
            raise
        finally:
            if sampler is not None:
                sampler.stop()
            if probe is not None:
                probe.close()
            self.cleanup()
        return self.result

    def _run_step(self, planned: PlannedStep, env: dict[str, str]) -> None:
        assert self.workdir is not None
        with self.lock:
            self.run.begin_step(planned)
        span = StepSpan(planned.index, planned.replicas, time.monotonic() - self.t0)
        self.result.spans.append(span)
        started = time.monotonic()
        prefix = f"{app_prefix(self.bench.name)}s{planned.index}-r"
        self.replicas = []
        for i in range(planned.replicas):
            with deferred_signals():
                self.replicas.append(ReplicaProcess(f"{prefix}{i}", env, self.workdir, self.launcher))
        timed_out = False
        marked = False
        deadline = started + self.spec.step_timeout_seconds
        while True:
            if self.pg is not None and self.pg.died():
                self._recover_server()
            running = sum(1 for r in self.replicas if r.proc.poll() is None)
            if not marked and all(r.work_done() for r in self.replicas):
                with self.lock:
                    self.run.mark_work_done()
                marked = True
            self._report_progress(planned, started, running)
            if running == 0:
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(POLL_SECONDS)
        # One last read so the end of the step is in the peaks.
        reports = []
        for r in self.replicas:
            r.kill()
            reports.append(r.report())
        self.replicas = []
        with self.lock:
            step = self.run.finish_step(reports, timed_out=timed_out)
        span.end = time.monotonic() - self.t0
        self._drain()
        return step

    def _recover_server(self) -> None:
        """The server died under the step: bring it back like a StatefulSet would, and wait until the
        probe has seen the new server (so the step records the restart)."""
        assert self.pg is not None
        with self.lock:
            seen = self.run.accumulator.server_restarts if self.run.accumulator else 0
        self.pg.restart()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with self.lock:
                acc = self.run.accumulator
                if acc is None or acc.server_restarts > seen:
                    return
            time.sleep(POLL_SECONDS)

    def _drain(self) -> None:
        """Wait until the server has closed the step's backends, so peaks don't carry over."""
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline:
            with self.lock:
                last = self.last_sample
            if last is not None and last.ok and last.total == 0:
                return
            time.sleep(POLL_SECONDS)

    def _report_progress(self, planned: PlannedStep, started: float, running: int) -> None:
        with self.lock:
            status = self.run.status
            live, peak = status.live_connections, (self.run.step.peak_connections if self.run.step else 0)
        now = time.monotonic()
        self.progress(Progress(planned.index, len(self.run.plan), planned.replicas, now - self.t0,
                               now - started, live, peak, running, status.phase))

    def cleanup(self) -> None:
        """Kill every replica, stop the server, remove the temporary directories. Idempotent."""
        for r in self.replicas:
            r.kill()
        self.replicas = []
        if self.launcher is not None:
            self.launcher.close()
        if self.pg is not None:
            self.pg.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def run_local(bench: PoolBenchmark, progress: Callable[[Progress], None] | None = None) -> LocalResult:
    return LocalRunner(bench, progress).execute()
