"""A replica of several worker processes (``workload.processes`` > 1): gunicorn's or uvicorn's shape.

The engine is configured once, in the parent, before the fork; each worker then calls
``engine.dispose(close=False)`` first, as SQLAlchemy's docs advise for ``os.fork()``: the worker
gets a pool of its own and never touches a connection of the parent's. So one replica opens up to
``processes`` × its pool's connections, which is the arithmetic this shape exists to check.

The parent runs no query: it reads each worker's summary from a pipe (a worker sends one every
``REPORT_SECONDS`` and at each phase change), merges them into the replica's summary (outcomes and
histograms add up exactly, the earliest error is the replica's first) and serves them as the
replica's metrics. A crashed worker crashes the replica, as a crashing app process takes its pod
down: the other workers are killed and the replica exits 1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import replace
from typing import Any

from poolbench.core.client_timeline import OpenTimeline, merge_open_timelines
from poolbench.core.contracts.phases import (
    CRASHED,
    DONE,
    FINISHED,
    HOLDING,
    RUNNING,
    STARTING,
    WORK_OVER,
    ReplicaPhase,
)
from poolbench.core.contracts.replica_env import WorkloadConfig
from poolbench.core.contracts.summary import ReplicaSummary
from poolbench.core.histogram import Histogram
from poolbench.core.outcomes import OUTCOMES

from .metrics import Measures, ReplicaMetrics
from .replica import Replica, build_engine, now_iso, write_summary_file

REPORT_SECONDS = 0.2


def _worker(cfg: WorkloadConfig, engine: Any, out: int, index: int) -> None:
    """In a forked worker: its own pool, the caller threads, summaries down the pipe. Never returns."""
    code = 1
    try:
        # SQLAlchemy's advice after a fork: a new pool, the parent's left alone (an async engine's sync core).
        getattr(engine, "sync_engine", engine).dispose(close=False)
        stream = os.fdopen(out, "w", buffering=1)
        lock = threading.Lock()

        def publish(text: str) -> None:
            with lock:
                stream.write(text + "\n")

        own = replace(cfg, processes=1, summary_path=None, metrics_port=0, exit_after_hold=True)
        replica = Replica(own, engine=engine, publish=publish)
        signal.signal(signal.SIGTERM, lambda *_: replica.stop.set())
        done = threading.Event()

        def report() -> None:
            while not done.wait(REPORT_SECONDS):
                publish(replica.summary(points=False).to_text(limit=None))  # the timeline at each phase only

        threading.Thread(target=report, daemon=True, name=f"poolbench-report-{index}").start()
        code = replica.run()
        done.set()
        publish(replica.summary().to_text(limit=None))
    except BaseException:  # noqa: BLE001 - reported as this worker's exit code; the parent names it
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def merge_summaries(name: str, phase: ReplicaPhase, summaries: list[ReplicaSummary]) -> ReplicaSummary:
    """The replica's summary from its workers': counts and histograms add up, the earliest error wins."""
    outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
    latency, wait = Histogram(), Histogram()
    for s in summaries:
        for key, value in s.outcomes.items():
            outcomes[key] = outcomes.get(key, 0) + value
        latency.merge(s.latency)
        wait.merge(s.checkout_wait)
    failed = [s for s in summaries if s.first_error]
    first = min(failed, key=lambda s: s.first_error_at or float("inf")) if failed else ReplicaSummary()
    starts = [s.work_started_at for s in summaries if s.work_started_at is not None]
    ends = [s.work_ended_at for s in summaries if s.work_ended_at is not None]
    timelines = [s.connections for s in summaries if s.connections is not None]
    return ReplicaSummary(
        replica=name,
        phase=phase,
        processes=len(summaries),
        outcomes=outcomes,
        first_error=first.first_error,
        first_error_class=first.first_error_class,
        first_error_at=first.first_error_at,
        peak_checked_out=sum(s.peak_checked_out for s in summaries),
        started_at=min((s.started_at for s in summaries if s.started_at), default=None),
        work_done_at=max((s.work_done_at for s in summaries if s.work_done_at), default=None)
        if phase in WORK_OVER
        else None,
        finished_at=now_iso() if phase in FINISHED else None,
        latency=latency,
        checkout_wait=wait,
        work_started_at=min(starts) if starts else None,
        work_ended_at=max(ends) if ends and len(ends) == len(summaries) else None,
        # Every worker's pool, summed by time (unknown while a worker has not said).
        connections=merge_open_timelines(timelines) if timelines and len(timelines) == len(summaries) else None,
    )


def died_with(said: ReplicaSummary) -> OpenTimeline | None:
    """The connections of a worker that died without a last word: those it reported when its work was
    over (no connect after that) closed by the time it was found dead; unknown if it was still working
    (it may have connected since its last report)."""
    if said.connections is None or said.phase not in WORK_OVER:
        return None
    return said.connections.closed_at(time.time_ns() // 1000)


def keep_points(before: ReplicaSummary | None, now: ReplicaSummary) -> ReplicaSummary:
    """A report without the connections' points keeps the points of the one before when no connect or
    close happened since (the same totals: the same timeline); otherwise only its maximum is known."""
    said, kept = now.connections, before.connections if before is not None else None
    if (
        said is not None
        and said.bucket_us is None
        and kept is not None
        and kept.bucket_us is not None
        and (kept.connects, kept.closes, kept.max_open) == (said.connects, said.closes, said.max_open)
    ):
        return replace(now, connections=kept)
    return now


class ProcessGroup:
    """The parent of a multi-process replica: forks the workers, merges what they say, serves it."""

    def __init__(self, cfg: WorkloadConfig):
        self.cfg = cfg
        self.engine = build_engine(cfg)  # configured before the fork, as an app's preload would
        self.latest: dict[int, ReplicaSummary] = {}
        self.exits: dict[int, int] = {}  # worker index → exit code
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.pids: list[int] = []
        self.metrics = ReplicaMetrics(lambda: self.merged().outcomes, self.measures, lambda: self.merged().connections)
        self.registry = self.metrics.registry

    @property
    def current_phase(self) -> ReplicaPhase:
        return self.metrics.phase

    def _set_phase(self, phase: ReplicaPhase) -> None:
        self.metrics.set_phase(phase)

    def merged(self) -> ReplicaSummary:
        with self.lock:
            summaries = [self.latest.get(i, ReplicaSummary()) for i in range(self.cfg.processes)]
        return merge_summaries(self.cfg.app_name, self.current_phase, summaries)

    def measures(self) -> Measures:
        m = self.merged()
        return Measures(m.latency, m.checkout_wait, m.work_started_at, m.work_ended_at)

    def summary_json(self) -> str:
        return self.merged().to_text()

    def write_summary(self) -> None:
        if self.cfg.summary_path:
            write_summary_file(self.cfg.summary_path, self.merged().to_text())

    def _read(self, index: int, stream: Any) -> None:
        for line in stream:
            summary = ReplicaSummary.parse(line)
            if summary is not None:
                with self.lock:
                    self.latest[index] = keep_points(self.latest.get(index), summary)

    def start(self) -> None:
        """Fork every worker before any thread of ours runs (a fork copies no thread, but it would copy
        a lock some thread holds), then read their pipes."""
        ends: list[int] = []
        for index in range(self.cfg.processes):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                for fd in [*ends, r]:
                    os.close(fd)
                _worker(self.cfg, self.engine, w, index)
            os.close(w)
            self.pids.append(pid)
            ends.append(r)
        for index, fd in enumerate(ends):
            threading.Thread(
                target=self._read, args=(index, os.fdopen(fd)), daemon=True, name=f"poolbench-worker-{index}"
            ).start()

    def _reap(self) -> None:
        for index, pid in enumerate(self.pids):
            if index in self.exits:
                continue
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self.exits[index] = os.waitstatus_to_exitcode(status)

    def _worker_phases(self) -> list[ReplicaPhase]:
        with self.lock:
            phases = [self.latest.get(i, ReplicaSummary()).phase or STARTING for i in range(self.cfg.processes)]
        for index, code in self.exits.items():
            if code != 0 and phases[index] != CRASHED:
                phases[index] = CRASHED  # died without saying so (killed, or an exception)
                with self.lock:
                    said = self.latest.get(index, ReplicaSummary())
                    self.latest[index] = replace(
                        said,
                        phase=CRASHED,
                        first_error=said.first_error or f"worker process {index} exited with code {code}",
                        first_error_at=time.time(),
                        connections=died_with(said),
                    )
        return phases

    def kill_workers(self, sig: int = signal.SIGKILL) -> None:
        for index, pid in enumerate(self.pids):
            if index not in self.exits:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

    def run(self) -> int:
        """After ``start``: follow the workers to the end; the replica's exit code."""
        self._set_phase(RUNNING)
        holding_said = stopping = False
        while True:
            self._reap()
            phases = self._worker_phases()
            if CRASHED in phases:
                self.kill_workers()
                while len(self.exits) < len(self.pids):
                    self._reap()
                    time.sleep(0.01)
                self._worker_phases()  # the workers it killed: their connections closed with them
                self._set_phase(CRASHED)
                self.write_summary()
                return 1
            if len(self.exits) == len(self.pids):
                break
            if not holding_said and all(p in WORK_OVER for p in phases):
                holding_said = True
                self._set_phase(HOLDING)
                self.write_summary()
            if self.stop.wait(0.05) and not stopping:
                stopping = True
                self.kill_workers(signal.SIGTERM)
        self._set_phase(DONE)
        self.write_summary()
        if not self.cfg.exit_after_hold:
            self.stop.wait()
        return 0
