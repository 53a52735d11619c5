"""One replica: an engine, caller threads through ``engine.begin()``, a hold, a summary.

Every attempt is classified (ok, tooManyClients, reservedSlots, poolTimeout, other). Live counters
and pool status are served as Prometheus metrics; the final summary is JSON at
POOLBENCH_SUMMARY_PATH (in Kubernetes: the termination-message path). The summary is also written
when the work ends (phase ``holding``) so a runner knows the pool now holds only its ghosts.

The hot loop is kept cheap so the driver, not the benchmark, is what gets measured: each caller
thread tallies its outcomes in its own list (no lock, no Prometheus call per statement; the counter
is brought up to date when it is scraped or summarised), and the statement goes through
``exec_driver_sql`` as raw SQL (no compile step, no bind-parameter parsing).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, start_http_server
from sqlalchemy import Connection, create_engine, event, pool

from poolbench.core.outcomes import OK, OUTCOMES, classify_exception, short_message
from poolbench.core.workload_env import WorkloadConfig

ENGINE_ARGS = {
    "poolSize": "pool_size",
    "maxOverflow": "max_overflow",
    "poolTimeout": "pool_timeout",
    "poolRecycle": "pool_recycle",
    "poolPrePing": "pool_pre_ping",
    "poolUseLifo": "pool_use_lifo",
}
PHASES = ["starting", "running", "holding", "done", "crashed"]
OUTCOME_INDEX = {outcome: i for i, outcome in enumerate(OUTCOMES)}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def build_engine(cfg: WorkloadConfig):
    """The engine under test; connection target from libpq's PG* variables."""
    kwargs = {ENGINE_ARGS[k]: v for k, v in cfg.engine.items() if k in ENGINE_ARGS}
    poolclass = getattr(pool, cfg.engine.get("poolClass", "QueuePool"))
    return create_engine(
        "postgresql+psycopg2://",
        poolclass=poolclass,
        connect_args={"application_name": cfg.app_name[:63]},
        # The statement is raw SQL: no bind parameters, so psycopg2 must not read % as placeholders.
        execution_options={"no_parameters": True},
        **kwargs,
    )


class _TalliedCounter:
    """Serves a Counter whose increments live in per-thread tallies, folded in when it is collected."""

    def __init__(self, counter: Counter, read):
        self.counter, self.read = counter, read
        self.synced: dict[str, int] = {}
        self.lock = threading.Lock()

    def sync(self) -> None:
        with self.lock:
            for outcome, total in self.read().items():
                delta = total - self.synced.get(outcome, 0)
                if delta > 0:
                    self.counter.labels(outcome).inc(delta)
                    self.synced[outcome] = total

    def describe(self):
        return self.counter.describe()

    def collect(self):
        self.sync()
        return self.counter.collect()


class Replica:
    def __init__(self, cfg: WorkloadConfig):
        self.cfg = cfg
        self.registry = CollectorRegistry()
        self.attempts = Counter("poolbench_attempts", "Statements attempted, by outcome", ["outcome"], registry=None)
        for outcome in OUTCOMES:
            self.attempts.labels(outcome)
        self.registry.register(_TalliedCounter(self.attempts, self.outcome_counts))
        self.phase = Enum("poolbench_phase", "Replica phase", states=PHASES, registry=self.registry)
        # One tally per caller thread (a list indexed like OUTCOMES), written only by its thread.
        self.tallies: list[list[int]] = []
        self.lock = threading.Lock()
        self.first_error: str | None = None
        self.first_error_class: str | None = None
        self.first_error_at: float | None = None
        self.checked_out = 0
        self.peak_checked_out = 0
        self.crashed = threading.Event()
        self.stop = threading.Event()
        self.started_at = now_iso()
        self.work_done_at: str | None = None
        self.engine = build_engine(cfg)
        event.listen(self.engine, "checkout", self._on_checkout)
        event.listen(self.engine, "checkin", self._on_checkin)
        pool_ = self.engine.pool
        Gauge("poolbench_pool_checked_out", "Connections checked out of the pool",
              registry=self.registry).set_function(lambda: self.checked_out)
        Gauge("poolbench_pool_peak_checked_out", "Most connections checked out at once",
              registry=self.registry).set_function(lambda: self.peak_checked_out)
        if isinstance(pool_, pool.QueuePool):
            Gauge("poolbench_pool_overflow", "QueuePool overflow (starts at -pool_size)",
                  registry=self.registry).set_function(pool_.overflow)
            Gauge("poolbench_pool_idle", "Connections idle in the pool",
                  registry=self.registry).set_function(pool_.checkedin)
        self._set_phase("starting")

    def _set_phase(self, phase: str) -> None:
        self.current_phase = phase
        self.phase.state(phase)

    def _on_checkout(self, *_args) -> None:
        with self.lock:
            self.checked_out += 1
            self.peak_checked_out = max(self.peak_checked_out, self.checked_out)

    def _on_checkin(self, *_args) -> None:
        with self.lock:
            self.checked_out -= 1

    def outcome_counts(self) -> dict[str, int]:
        with self.lock:
            tallies = list(self.tallies)
        return {outcome: sum(t[i] for t in tallies) for i, outcome in enumerate(OUTCOMES)}

    def _record_error(self, tally: list[int], outcome: str, exc: BaseException) -> None:
        with self.lock:
            tally[OUTCOME_INDEX[outcome]] += 1
            if self.first_error is None:
                self.first_error = short_message(exc)
                self.first_error_class = outcome
                self.first_error_at = time.time()

    def _execute(self) -> Callable[[Connection], object]:
        """``conn -> None`` running the statement once, as raw SQL: sent as written, with no
        bind-parameter parsing (``:word`` in a JSON or time literal, ``%`` in a LIKE pattern stay
        literal). An invalid statement fails, and is counted, at each attempt."""
        statement = self.cfg.statement
        return lambda conn: conn.exec_driver_sql(statement)

    def _caller(self) -> None:
        cfg = self.cfg
        execute = self._execute()
        begin = self.engine.begin
        stop, crashed = self.stop, self.crashed
        tally = [0] * len(OUTCOMES)  # this thread's outcomes, indexed like OUTCOMES
        ok = OUTCOME_INDEX[OK]
        with self.lock:
            self.tallies.append(tally)
        deadline = time.monotonic() + cfg.duration_seconds if cfg.duration_seconds else None
        remaining = cfg.iterations
        while not stop.is_set() and not crashed.is_set():
            if remaining is not None:
                if remaining <= 0:
                    break
                remaining -= 1
            elif deadline is not None and time.monotonic() >= deadline:
                break
            try:
                with begin() as conn:
                    execute(conn)
            except Exception as exc:  # every failure is an outcome to count, not a crash of the thread
                self._record_error(tally, classify_exception(exc), exc)
                if cfg.on_error == "crash":
                    crashed.set()
                    return
                continue
            tally[ok] += 1

    def summary(self) -> dict:
        counts = self.outcome_counts()
        return {
            "replica": self.cfg.app_name,
            "phase": self.current_phase,
            "outcomes": counts,
            "firstError": self.first_error,
            "firstErrorClass": self.first_error_class,
            "firstErrorAt": self.first_error_at,
            "peakCheckedOut": self.peak_checked_out,
            "startedAt": self.started_at,
            "workDoneAt": self.work_done_at,
            "finishedAt": now_iso() if self.current_phase in ("done", "crashed") else None,
        }

    def write_summary(self) -> None:
        path = self.cfg.summary_path
        if not path:
            return
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "w") as fh:
                json.dump(self.summary(), fh)
            os.replace(tmp, path)
        except OSError:
            # /dev/termination-log style paths cannot take a rename: write in place.
            with open(path, "w") as fh:
                json.dump(self.summary(), fh)

    def run(self) -> int:
        self._set_phase("running")
        threads = [threading.Thread(target=self._caller, daemon=True) for _ in range(self.cfg.threads)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            if self.crashed.wait(0.02):
                return self._crash()
            if self.stop.is_set():
                break
        if self.crashed.is_set():
            return self._crash()
        self.work_done_at = now_iso()
        self._set_phase("holding")
        self.write_summary()
        self.stop.wait(self.cfg.hold_seconds)
        self.engine.dispose()
        self._set_phase("done")
        self.write_summary()
        if not self.cfg.exit_after_hold:
            self.stop.wait()
        return 0

    def _crash(self) -> int:
        """The seed's behaviour: the replica dies on its first failed attempt."""
        self._set_phase("crashed")
        self.write_summary()
        return 1


def run(env: dict[str, str]) -> int:
    cfg = WorkloadConfig.from_env(env)
    replica = Replica(cfg)

    def on_term(_sig, _frame):
        replica.stop.set()

    signal.signal(signal.SIGTERM, on_term)
    if cfg.metrics_port:
        start_http_server(cfg.metrics_port, registry=replica.registry)
    code = replica.run()
    if code:
        # Don't wait for caller threads stuck in a query: a crash is a crash.
        os._exit(code)
    return code
