"""Sampling math: turn pg_stat_activity snapshots into a step's peaks (pure, no I/O).

The probe (poolbench.db.probe) produces one ``Sample`` per read; a ``StepAccumulator`` holds the
peaks between reads (peak-hold), counts gaps, and knows when the work ended so the ghosts
(idle connections kept by the pools) are read during the hold, not during the work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .histogram import rank
from .results import PeakByState, PoolerStepResult, StepResult

#: Reads whose p99 spacing exceeds this many intervals fell behind their schedule: a read took longer
#: than the interval, and the sampler started the next one late.
BEHIND_FACTOR = 1.5
#: Advised intervals are whole multiples of this (milliseconds).
INTERVAL_STEP_MS = 50
#: The longest interval a spec may ask for (``SamplingSpec.interval_ms``).
LONGEST_INTERVAL_MS = 60_000

STATE_KEYS = {
    "active": "active",
    "idle": "idle",
    "idle in transaction": "idle_in_transaction",
    "idle in transaction (aborted)": "idle_in_transaction",
}


@dataclass(frozen=True)
class PoolerRead:
    """One read of the poolers' admin consoles (``SHOW POOLS``), summed over the instances, for the
    benchmark's database only (not the admin console's own pool)."""

    ok: bool = True
    clients: int = 0  # cl_active + cl_waiting: client connections the app holds at the pooler
    waiting: int = 0  # cl_waiting: clients that sent a query and wait for a server connection
    max_wait_ms: float = 0.0  # maxwait + maxwait_us: the oldest waiting client's wait so far
    servers: int = 0  # server connections the poolers hold (any state)
    error: str | None = None


def pooler_read_from_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], database: str) -> PoolerRead:
    """Sum ``SHOW POOLS`` rows of ``database`` (columns by name: the set differs between versions)."""
    clients = waiting = servers = 0
    max_wait = 0.0
    for row in rows:
        values = dict(zip(columns, row, strict=False))
        if values.get("database") != database:
            continue
        active, queued = int(values.get("cl_active") or 0), int(values.get("cl_waiting") or 0)
        clients += active + queued
        waiting += queued
        servers += sum(int(values.get(k) or 0) for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"))
        wait_ms = float(values.get("maxwait") or 0) * 1000 + float(values.get("maxwait_us") or 0) / 1000
        max_wait = max(max_wait, wait_ms)
    return PoolerRead(clients=clients, waiting=waiting, max_wait_ms=round(max_wait, 3), servers=servers)


def merge_pooler_reads(reads: Sequence[PoolerRead]) -> PoolerRead:
    """Several instances read at one tick: one failed read makes the whole tick a gap."""
    failed = [r for r in reads if not r.ok]
    if failed:
        return PoolerRead(ok=False, error=failed[0].error)
    return PoolerRead(
        clients=sum(r.clients for r in reads),
        waiting=sum(r.waiting for r in reads),
        max_wait_ms=max((r.max_wait_ms for r in reads), default=0.0),
        servers=sum(r.servers for r in reads),
    )


@dataclass(frozen=True)
class Sample:
    """One read of pg_stat_activity (client backends, the monitor excluded)."""

    t: float  # seconds since the benchmark started
    ok: bool = True
    total: int = 0
    by_state: dict[str, int] = field(default_factory=dict)  # keys: active, idle, idle_in_transaction, other
    by_app: dict[str, int] = field(default_factory=dict)
    by_wait: dict[str, int] = field(default_factory=dict)  # by wait_event_type; "none": not waiting
    oldest_idle_seconds: float = 0.0
    error: str | None = None
    server_restarted: bool = False  # first read after the server came back with a new start time
    pooler: PoolerRead | None = None  # the poolers read at the same tick (pooled variants only)

    @classmethod
    def gap(cls, t: float, error: str) -> Sample:
        return cls(t=t, ok=False, error=error)


def sample_from_rows(t: float, rows: Sequence[Sequence[Any]]) -> Sample:
    """Build a Sample from grouped rows: (state, application_name, count, oldest idle seconds[,
    wait_event_type])."""
    total = 0
    by_state: dict[str, int] = {}
    by_app: dict[str, int] = {}
    by_wait: dict[str, int] = {}
    oldest = 0.0
    for state, app, count, idle_age, *rest in rows:
        key = STATE_KEYS.get(state or "", "other")
        total += count
        by_state[key] = by_state.get(key, 0) + count
        name = app or "(none)"
        by_app[name] = by_app.get(name, 0) + count
        if rest:
            wait = rest[0] or "none"
            by_wait[wait] = by_wait.get(wait, 0) + count
        if idle_age is not None:
            oldest = max(oldest, float(idle_age))
    return Sample(t=t, total=total, by_state=by_state, by_app=by_app, by_wait=by_wait, oldest_idle_seconds=oldest)


def interval_p99_ms(times: Sequence[float]) -> float | None:
    """The p99 (nearest rank) of the time between consecutive reads, in milliseconds to 0.1; None with
    fewer than two reads. Failed reads count: each was a read the sampler started. Below 100 spacings
    the nearest rank is the longest one: it is left out there (one stall is not a schedule)."""
    ordered = sorted(times)
    spacings = sorted(b - a for a, b in zip(ordered, ordered[1:], strict=False))
    if not spacings:
        return None
    at = rank(0.99, len(spacings))
    if len(spacings) > 1:
        at = min(at, len(spacings) - 1)
    return round(spacings[at - 1] * 1000, 1)


def fell_behind(p99_ms: float | None, interval_ms: float) -> bool:
    """The reads did not keep their interval: p99 spacing above ``BEHIND_FACTOR`` × the interval."""
    return p99_ms is not None and p99_ms > BEHIND_FACTOR * interval_ms


def advised_interval_ms(read_ms: float) -> int:
    """An interval no shorter than a read takes (``read_ms``), rounded up to ``INTERVAL_STEP_MS``: a
    shorter one buys no more reads, it only keeps the server reading back to back."""
    steps = max(1, math.ceil(round(read_ms, 6) / INTERVAL_STEP_MS))
    return min(LONGEST_INTERVAL_MS, steps * INTERVAL_STEP_MS)


@dataclass
class StepAccumulator:
    """Peak-hold over the samples of one step."""

    replicas: int
    samples: int = 0
    gaps: int = 0
    peak: int = 0
    peak_by_state: dict[str, int] = field(default_factory=dict)
    peak_by_app: dict[str, int] = field(default_factory=dict)
    peak_by_wait: dict[str, int] = field(default_factory=dict)
    oldest_idle: float = 0.0
    last_idle: int = 0
    work_done: bool = False
    work_done_at: float = float("inf")  # sample time from which the replicas hold only their ghosts
    idle_after_work: int | None = None
    last_error: str | None = None
    live: int = 0
    live_by_state: dict[str, int] = field(default_factory=dict)  # the last read's, by state
    server_restarts: int = 0
    pooled: bool = False
    pooler_reads: int = 0
    pooler_gaps: int = 0
    client_peak: int = 0
    waiting_peak: int = 0
    max_wait_ms: float = 0.0
    last_clients: int = 0
    clients_after_work: int | None = None
    reads: list[tuple[float, int]] = field(default_factory=list)  # (t, total) of each read, to check the log's
    read_times: list[float] = field(default_factory=list)  # every read's start, failed ones too

    def add(self, sample: Sample) -> None:
        self.read_times.append(sample.t)
        if self.pooled:
            self.add_pooler(sample.t, sample.pooler)
        if not sample.ok:
            self.gaps += 1
            self.last_error = sample.error
            return
        self.samples += 1
        self.reads.append((sample.t, sample.total))
        if sample.server_restarted:
            self.server_restarts += 1
        total = sample.total
        self.live = total
        self.live_by_state = dict(sample.by_state)
        self.peak = max(self.peak, total)
        for key, value in sample.by_state.items():
            self.peak_by_state[key] = max(self.peak_by_state.get(key, 0), value)
        for app, value in sample.by_app.items():
            self.peak_by_app[app] = max(self.peak_by_app.get(app, 0), value)
        for wait, value in sample.by_wait.items():
            self.peak_by_wait[wait] = max(self.peak_by_wait.get(wait, 0), value)
        self.oldest_idle = max(self.oldest_idle, sample.oldest_idle_seconds)
        idle = sample.by_state.get("idle", 0)
        self.last_idle = idle
        if sample.t >= self.work_done_at:
            # Ghosts: the most idle connections seen while the replicas hold their engines.
            self.idle_after_work = max(self.idle_after_work or 0, idle)

    def add_pooler(self, t: float, read: PoolerRead | None) -> None:
        """The poolers' side of one tick. A tick without a pooler read is a gap too: never silent."""
        if read is None or not read.ok:
            self.pooler_gaps += 1
            if read is not None and read.error:
                self.last_error = f"pooler: {read.error}"
            return
        self.pooler_reads += 1
        self.client_peak = max(self.client_peak, read.clients)
        self.waiting_peak = max(self.waiting_peak, read.waiting)
        self.max_wait_ms = max(self.max_wait_ms, read.max_wait_ms)
        self.last_clients = read.clients
        if t >= self.work_done_at:
            # The app's ghosts behind a pooler: its pools' idle client connections, held at the pooler.
            self.clients_after_work = max(self.clients_after_work or 0, read.clients)

    def mark_work_done(self, at: float = float("-inf")) -> None:
        """Every live replica finished its work at sample time ``at`` and now holds its pool (the
        first call wins: later looks see the same finished work). Samples read before ``at`` but
        handed over afterwards still count as work, not as ghosts."""
        if not self.work_done:
            self.work_done = True
            self.work_done_at = at

    def interval_p99_ms(self) -> float | None:
        """How regular the step's reads were (``interval_p99_ms`` of their start times)."""
        return interval_p99_ms(self.read_times)

    def fill(self, step: StepResult) -> StepResult:
        step.samples = self.samples
        step.sample_gaps = self.gaps
        step.monitor_error = self.last_error
        step.peak_connections = self.peak
        step.peak_by_state = PeakByState(
            active=self.peak_by_state.get("active", 0),
            idle=self.peak_by_state.get("idle", 0),
            idle_in_transaction=self.peak_by_state.get("idle_in_transaction", 0),
        )
        step.peak_by_replica = dict(sorted(self.peak_by_app.items()))
        step.peak_by_wait_event_type = dict(sorted(self.peak_by_wait.items()))
        server_idle = self.idle_after_work if self.idle_after_work is not None else self.last_idle
        step.server_idle_at_end = server_idle
        step.idle_at_end = server_idle
        if self.pooled:
            pooler = step.pooler = step.pooler or PoolerStepResult()
            step.idle_at_end = self.clients_after_work if self.clients_after_work is not None else self.last_clients
            pooler.client_peak_connections = self.client_peak
            pooler.waiting_peak = self.waiting_peak
            pooler.max_wait_ms = round(self.max_wait_ms, 3)
            pooler.sample_gaps = self.pooler_gaps
        step.oldest_idle_seconds = round(self.oldest_idle, 3)
        step.database_restarts = self.server_restarts
        return step
