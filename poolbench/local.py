"""The local runner: the benchmark on an embedded PostgreSQL with replicas as local processes.

It drives the same core as the operator (poolbench.benchmark); only the platform differs. Every
process it starts and the temporary directories are removed on the way out, Ctrl-C included.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
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


# -- Replica launcher ------------------------------------------------------------------------------
# Starting ``python -m workload`` costs each replica a fresh interpreter and ~0.3 s of CPU for its
# imports (SQLAlchemy, pydantic, prometheus_client): a 10-replica step spent ~2 s of a 2-core machine
# just booting. The launcher is one process that imports the workload once (while PostgreSQL starts)
# and forks a replica per request; each child is then exactly a ``python -m workload`` run: its own
# session, environment, log file and exit code. If the launcher cannot be used, replicas fall back
# to ``python -m workload``.

LAUNCHER_CODE = "from poolbench.local import _launcher_main; _launcher_main()"
LAUNCHER_NAME = "poolbench-workload-launcher"  # in its command line (and its children's), for ps
LAUNCHER_ENV = "POOLBENCH_LAUNCHER"  # "off": every replica is its own ``python -m workload``
LAUNCHER_READY_SECONDS = 30.0


def _launcher_send(message: dict) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(1, data):]


def _launcher_child(env: dict[str, str], log_path: str, sync_w: int, close: list[int]) -> None:
    """In the forked child: become a replica process, run the workload, never return."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in close:
            os.close(fd)
        os.setsid()  # like start_new_session=True: killpg(pid) reaches the replica and only it
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.write(sync_w, b"1")  # the launcher answers with our pid only once we lead our own session
        os.close(sync_w)
        os.environ.clear()
        os.environ.update(env)
        from workload.__main__ import main

        main()
        code = 0
    except SystemExit as exc:  # what the interpreter would do with it
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            for t in threading.enumerate():  # interpreter exit: wait for non-daemon threads
                if t is not threading.current_thread() and not t.daemon:
                    t.join()
            import atexit

            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _launcher_main() -> None:
    """The launcher process. Protocol, JSON lines: stdin takes ``{"env": {...}, "log": path}``;
    stdout answers ``{"ready": true}`` once, then ``{"pid": P}`` (or ``{"error": why}``) per request
    in order, and ``{"exit": P, "code": C}`` when a replica ends (C as Popen.returncode). On EOF it
    kills the replicas still running, reaps them and exits."""
    import gc
    import select

    import workload.__main__  # noqa: F401 - the point: import once, fork many
    import workload.replica  # noqa: F401
    from sqlalchemy.dialects.postgresql import psycopg2 as _dialect  # noqa: F401 - loaded by create_engine

    gc.freeze()  # keep the imported objects out of the children's collections (fewer copied pages)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    children: set[int] = set()

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            _launcher_send({"exit": pid, "code": os.waitstatus_to_exitcode(status)})

    def spawn(request: dict) -> None:
        sync_r, sync_w = os.pipe()
        try:
            pid = os.fork()
        except OSError as err:
            os.close(sync_r)
            os.close(sync_w)
            _launcher_send({"error": str(err)})
            return
        if pid == 0:
            _launcher_child(request["env"], request["log"], sync_w, [sync_r, wake_r, wake_w])
        os.close(sync_w)
        children.add(pid)
        ok = os.read(sync_r, 1) == b"1"
        os.close(sync_r)
        _launcher_send({"pid": pid} if ok else {"error": "the replica died before it started"})

    _launcher_send({"ready": True})
    buffer = b""
    while True:
        readable, _, _ = select.select([0, wake_r], [], [])
        if wake_r in readable:
            try:
                os.read(wake_r, 512)
            except BlockingIOError:
                pass
            reap()
        if 0 in readable:
            data = os.read(0, 65536)
            if not data:
                break
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    spawn(json.loads(line))
            reap()
    for pid in list(children):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    while children:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        children.discard(pid)


class ForkedProcess:
    """The Popen-like handle of a replica forked by the launcher (pid, poll, wait)."""

    def __init__(self, launcher: "ReplicaLauncher", pid: int):
        self.launcher, self.pid = launcher, pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.launcher.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"replica {self.pid}", timeout)
            self.launcher.wait_exit(min(left, 0.5) if left is not None else 0.5)
        return self.returncode


class ReplicaLauncher:
    """Runner side of the launcher: ``spawn()`` returns a ForkedProcess, or None to fall back."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.ready = threading.Event()
        self.dead = False
        self.cond = threading.Condition()
        self.exits: dict[int, int] = {}
        self.replies: list[dict | None] = []
        self.spawn_lock = threading.Lock()
        self.reader: threading.Thread | None = None

    def start(self) -> "ReplicaLauncher":
        try:
            with deferred_signals():
                self.proc = subprocess.Popen(
                    [sys.executable, "-c", LAUNCHER_CODE, LAUNCHER_NAME], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, start_new_session=True,
                )
        except OSError:
            self.dead = True
            self.ready.set()
            return self
        self.reader = threading.Thread(target=self._read, daemon=True, name="poolbench-launcher")
        self.reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            with self.cond:
                if "exit" in message:
                    self.exits[message["exit"]] = message["code"]
                elif "ready" in message:
                    self.ready.set()
                else:
                    self.replies.append(message)
                self.cond.notify_all()
        with self.cond:
            self.dead = True
            self.ready.set()
            self.cond.notify_all()

    def spawn(self, env: dict[str, str], log_path: Path) -> ForkedProcess | None:
        if not self.ready.wait(LAUNCHER_READY_SECONDS) or self.dead or self.proc is None:
            return None
        with self.spawn_lock:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write((json.dumps({"env": env, "log": str(log_path)}) + "\n").encode())
                self.proc.stdin.flush()
            except (OSError, ValueError):
                return None
            with self.cond:
                deadline = time.monotonic() + 10
                while not self.replies and not self.dead and time.monotonic() < deadline:
                    self.cond.wait(0.5)
                reply = self.replies.pop(0) if self.replies else None
        if not reply or "pid" not in reply:
            return None
        return ForkedProcess(self, reply["pid"])

    def exit_code(self, pid: int) -> int | None:
        with self.cond:
            if pid in self.exits:
                return self.exits[pid]
            lost = self.dead
        if lost:  # the launcher is gone and cannot tell: ask the kernel whether the replica lives
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return 255
            except PermissionError:
                pass
        return None

    def wait_exit(self, timeout: float) -> None:
        with self.cond:
            self.cond.wait(timeout)

    def close(self) -> None:
        """End the launcher (it kills and reaps any replica still running). Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            proc.wait(5)
        if self.reader is not None:
            self.reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()


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
