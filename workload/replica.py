"""One replica: an engine, caller threads through ``engine.begin()``, a hold, a summary.

Every attempt is classified (ok, tooManyClients, reservedSlots, poolTimeout, other). Live counters
and pool status are served as Prometheus metrics (``workload.metrics``); the final summary
(``poolbench.core.contracts.summary``) is JSON at POOLBENCH_SUMMARY_PATH (in Kubernetes: the
termination-message path). The summary is also written when the work ends (phase ``holding``) so a
runner knows the pool now holds only its ghosts.

Each attempt is also timed: its checkout wait (from asking ``engine.begin()`` for a connection until
the ``with`` body runs: the pool's queue and any connect; for a failed checkout, until it failed) and,
when it succeeds, its latency (from the same request until the commit returned). Both are counted in
the buckets of ``poolbench.core.histogram`` (its grid plus the spec's limits as edges, from the
environment), so replicas merge exactly; the summary carries them as ``latencyMs`` /
``checkoutWaitMs`` and Prometheus serves them as histograms (non-empty buckets and limit edges only).

The hot loop is kept cheap so the driver, not the benchmark, is what gets measured: each caller
thread tallies its outcomes and timings in its own lists (no lock, no Prometheus call per statement;
the metrics are built from the tallies when they are scraped or summarised), takes one
``perf_counter`` per boundary (request, checked out, committed), and the statement goes through
``exec_driver_sql`` as raw SQL (no compile step, no bind-parameter parsing).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
import time
import uuid
from bisect import bisect_left
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Gauge
from sqlalchemy import create_engine, event, pool

from poolbench.core.contracts import metrics
from poolbench.core.contracts.drivers import ASYNC_DRIVER, SQLALCHEMY_URLS
from poolbench.core.contracts.phases import CRASHED, DONE, FINISHED, HOLDING, RUNNING, ReplicaPhase
from poolbench.core.contracts.replica_env import WorkloadConfig
from poolbench.core.contracts.summary import ReplicaSummary
from poolbench.core.histogram import Histogram, edges_with
from poolbench.core.outcomes import FULL_MESSAGE, OK, OUTCOMES, classify_exception, short_message

from .connections import ConnectionCounter
from .metrics import Measures, ReplicaMetrics

#: ``onError: crash``: how long the replica lets its other callers finish the attempt they are in before
#: it reports and dies, so each attempt the server refused is in its count (a refused connect fails in
#: milliseconds; a caller stuck in a long statement is not waited for beyond this).
CRASH_SETTLE_SECONDS = 1.0
OUTCOME_INDEX = {outcome: i for i, outcome in enumerate(OUTCOMES)}
OK_INDEX = OUTCOME_INDEX[OK]
# Indexes into a thread's ``extremes`` list.
LAT_SUM, LAT_MAX, WAIT_SUM, WAIT_MAX = range(4)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def unique_statement_name() -> str:
    """A prepared-statement name no other client of a shared server connection can have taken."""
    return f"__asyncpg_{uuid.uuid4()}__"


def driver_settings(cfg: WorkloadConfig) -> tuple[str, dict[str, Any]]:
    """The engine URL and connect_args for the driver. Behind PgBouncer in transaction mode a client's
    transactions may run on different server connections, so no driver may keep server-side prepared
    statements under names another client can also use (they clash with "prepared statement … already
    exists", or go missing). Set as SQLAlchemy's dialect documentation says for PgBouncer:
    asyncpg: ``prepared_statement_cache_size=0`` in the URL, asyncpg's own ``statement_cache_size=0`` and a
    unique ``prepared_statement_name_func``; psycopg 3: ``prepare_threshold=None`` (never prepare);
    psycopg2 never prepares."""
    name = cfg.app_name[:63]
    url = SQLALCHEMY_URLS[cfg.driver]
    pooling = cfg.transaction_pooled and cfg.driver_options == "pooling"
    if cfg.driver == ASYNC_DRIVER:
        connect_args: dict[str, Any] = {"server_settings": {"application_name": name}}
        if pooling:
            url += "?prepared_statement_cache_size=0"
            connect_args.update(statement_cache_size=0, prepared_statement_name_func=unique_statement_name)
        return url, connect_args
    connect_args = {"application_name": name}
    if cfg.driver == "psycopg" and pooling:
        connect_args["prepare_threshold"] = None
    return url, connect_args


#: Per-connection choices of a pooler instance: from the OS (a forked worker must not repeat its parent's draws).
PLACEMENT = random.SystemRandom()


def spread_connections(engine: Any, addresses: tuple[tuple[str, int], ...]) -> Any:
    """Each new DB-API connection goes to one of ``addresses`` picked at random, as a Kubernetes Service
    places each connection on a pod (SQLAlchemy's do_connect: the same for psycopg2, psycopg and asyncpg)."""
    if not addresses:
        return engine

    def pick(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["host"], cparams["port"] = PLACEMENT.choice(addresses)

    event.listen(getattr(engine, "sync_engine", engine), "do_connect", pick)
    return engine


def build_engine(cfg: WorkloadConfig) -> Any:
    """The engine under test; connection target from libpq's PG* variables (asyncpg reads the same),
    or per connection one of the pooler instances (POOLBENCH_POOLER_HOSTS).
    asyncpg gets ``create_async_engine`` (QueuePool becomes its AsyncAdaptedQueuePool)."""
    return run_on_connect(spread_connections(_engine(cfg), cfg.pooler_hosts), cfg.on_connect)


def run_on_connect(engine: Any, statements: tuple[str, ...]) -> Any:
    """The app's statements on each new DB-API connection, each committed on its own (autocommit for their
    length, as SQLAlchemy's documentation sets a session variable in a ``connect`` listener)."""
    if not statements:
        return engine

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        before = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        try:
            cursor = dbapi_connection.cursor()
            for statement in statements:
                cursor.execute(statement)
            cursor.close()
        finally:
            dbapi_connection.autocommit = before

    event.listen(getattr(engine, "sync_engine", engine), "connect", on_connect)
    return engine


def _engine(cfg: WorkloadConfig) -> Any:
    kwargs = cfg.engine.pool_arguments()
    pool_name = cfg.engine.pool_class
    url, connect_args = driver_settings(cfg)
    if cfg.driver == ASYNC_DRIVER:
        from sqlalchemy.ext.asyncio import create_async_engine

        poolclass = pool.AsyncAdaptedQueuePool if pool_name == "QueuePool" else getattr(pool, pool_name)
        return create_async_engine(
            url, poolclass=poolclass, connect_args=connect_args, execution_options={"no_parameters": True}, **kwargs
        )
    return create_engine(
        url,
        poolclass=getattr(pool, pool_name),
        connect_args=connect_args,
        # The statement is raw SQL: no bind parameters, so the driver must not read % as placeholders.
        execution_options={"no_parameters": True},
        **kwargs,
    )


def write_summary_file(path: str, text: str) -> None:
    """The summary in one piece: written beside ``path`` and renamed over it where the file system allows."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError:
        # /dev/termination-log style paths cannot take a rename: write in place.
        with open(path, "w") as fh:
            fh.write(text)


#: The DB-API connection this thread is setting up (the pool's first_connect and connect events, until
#: its checkout): an error in the dialect's first queries on it reaches handle_error without a Connection.
_CONNECTING = threading.local()


def remember_connecting(dbapi_connection: Any, _record: Any) -> None:
    _CONNECTING.conn, _CONNECTING.message = dbapi_connection, ""


def forget_connecting(*_args: Any) -> None:
    _CONNECTING.conn, _CONNECTING.message = None, ""


def libpq_message(dbapi_connection: Any) -> str:
    """What libpq kept of the server's last answer on a psycopg2 or psycopg connection ("" for others)."""
    try:
        return str(dbapi_connection.info.error_message or "")
    except Exception:  # noqa: BLE001 - asyncpg's adapter has no .info; a closed connection nothing more to tell
        return ""


def keep_message_before_closing(dialect: Any) -> None:
    """SQLAlchemy closes a new connection whose connect events failed before handle_error sees the
    error, and libpq's message goes with it: read it first (the dialect's terminate, on this engine only)."""
    terminate = dialect.do_terminate

    def do_terminate(dbapi_connection: Any) -> None:
        if dbapi_connection is getattr(_CONNECTING, "conn", None):
            _CONNECTING.message = libpq_message(dbapi_connection)
        terminate(dbapi_connection)

    dialect.do_terminate = do_terminate


def keep_full_message(ctx: Any) -> None:
    """SQLAlchemy's ``handle_error`` hook: when libpq kept more of the server's answer than the
    exception says (PgBouncer's "FATAL: query_wait_timeout" before it closed the connection; psycopg2
    raises with "server closed the connection unexpectedly" only), keep libpq's whole message on the
    exception for the classifier (``outcomes.FULL_MESSAGE``): from the statement's connection, or from
    the one being set up when the error came from the dialect's queries on a new connection."""
    original = ctx.original_exception
    if getattr(original, "pgcode", None) is not None:  # the server's own error result: its text is whole
        return
    if ctx.connection is not None and ctx.connection.invalidated:  # never make .connection reconnect
        return
    try:
        full = (
            libpq_message(ctx.connection.connection.dbapi_connection)
            if ctx.connection is not None
            else getattr(_CONNECTING, "message", "")
        )
    except Exception:  # noqa: BLE001 - a connection already closed by the pool has nothing more to tell
        return
    lost = "server closed the connection unexpectedly"
    if full and full.strip() and full.strip() not in str(original):
        # What the server (or pooler) said before it closed; libpq's own "server closed…" lines add nothing.
        said = full.split(lost)[0].strip() if lost in full and full.split(lost)[0].strip() else full
        with contextlib.suppress(AttributeError):  # an exception type without __dict__ keeps its own text
            setattr(original, FULL_MESSAGE, " ".join(said.split()))


class CallerTally:
    """One caller's (thread's or task's) own tallies: outcomes, latency and wait buckets, sums and
    maxima, registered with its replica so scrapes and summaries see them, written only by this
    caller: no lock and no Prometheus call per statement."""

    __slots__ = ("replica", "tally", "edges", "latency", "wait", "extremes", "left", "deadline", "stopped", "crashed")

    def __init__(self, replica: Replica):
        self.replica = replica
        self.stopped, self.crashed = replica.stop.is_set, replica.crashed.is_set
        self.tally = [0] * len(OUTCOMES)  # indexed like OUTCOMES
        self.edges = replica.edges
        # Bucket counts on the replica's edges (poolbench.core.histogram), one more for above the top.
        self.latency = [0] * (len(self.edges) + 1)
        self.wait = [0] * (len(self.edges) + 1)
        self.extremes = [0.0, 0.0, 0.0, 0.0]  # LAT_SUM, LAT_MAX, WAIT_SUM, WAIT_MAX
        cfg = replica.cfg
        self.left = cfg.iterations
        self.deadline = time.monotonic() + cfg.duration_seconds if cfg.duration_seconds else None
        with replica.lock:
            replica.tallies.append(self.tally)
            replica.timings.append((self.latency, self.wait, self.extremes))
            if replica.work_started_at is None:
                replica.work_started_at = time.time()

    def more(self) -> bool:
        """One more attempt? By iterations or by duration, until the replica stops or crashes."""
        if self.stopped() or self.crashed():
            return False
        if self.left is not None:
            self.left -= 1
            return self.left >= 0
        return self.deadline is None or time.monotonic() < self.deadline

    def _count(self, values: list[int], ms: float, total: int, top: int) -> None:
        values[bisect_left(self.edges, ms)] += 1
        self.extremes[total] += ms
        if ms > self.extremes[top]:
            self.extremes[top] = ms

    def succeeded(self, t0: float, t1: float, t2: float) -> None:
        """The hot path: inline, no call beyond the bucket lookup (measuring adds next to nothing to the
        app's work)."""
        self.tally[OK_INDEX] += 1
        extremes = self.extremes
        ms = (t1 - t0) * 1000.0
        self.wait[bisect_left(self.edges, ms)] += 1
        extremes[WAIT_SUM] += ms
        if ms > extremes[WAIT_MAX]:
            extremes[WAIT_MAX] = ms
        ms = (t2 - t0) * 1000.0
        self.latency[bisect_left(self.edges, ms)] += 1
        extremes[LAT_SUM] += ms
        if ms > extremes[LAT_MAX]:
            extremes[LAT_MAX] = ms

    def failed(self, t0: float, t1: float, exc: BaseException) -> bool:
        """Count a failed attempt, its wait until it failed (``t1 == t0``: it never got its connection);
        True when the replica must crash."""
        replica = self.replica
        self._count(self.wait, ((t1 if t1 > t0 else time.perf_counter()) - t0) * 1000.0, WAIT_SUM, WAIT_MAX)
        replica.record_error(self.tally, classify_exception(exc, pooled=replica.cfg.pooled), exc)
        if replica.cfg.on_error == "crash":
            replica.crashed.set()
            return True
        return False

    def done(self) -> None:
        replica = self.replica
        with replica.lock:
            replica.threads_finished += 1
            if replica.threads_finished == replica.cfg.threads:
                replica.work_ended_at = time.time()


class Replica:
    """One engine and its caller threads. ``engine``: one configured before a fork (a worker process of
    a multi-process replica); ``publish``: where the summary goes instead of POOLBENCH_SUMMARY_PATH."""

    def __init__(self, cfg: WorkloadConfig, engine: Any = None, publish: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.publish = publish
        self.metrics = ReplicaMetrics(
            self.outcome_counts, self.measures, lambda: self.connections.timeline(points=False)
        )
        self.registry = self.metrics.registry
        # One tally per caller thread (a list indexed like OUTCOMES), written only by its thread.
        self.tallies: list[list[int]] = []
        # Per caller thread, written only by it: latency and checkout-wait bucket counts, and
        # [latency sum, latency max, wait sum, wait max] in milliseconds.
        self.timings: list[tuple[list[int], list[int], list[float]]] = []
        self.edges = edges_with(cfg.histogram_edges_ms)
        self.work_started_at: float | None = None
        self.work_ended_at: float | None = None
        self.threads_finished = 0
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
        self.engine = engine if engine is not None else build_engine(cfg)
        sync_engine = getattr(self.engine, "sync_engine", self.engine)  # events go to an async engine's sync core
        event.listen(sync_engine, "checkout", self._on_checkout)
        event.listen(sync_engine, "checkin", self._on_checkin)
        event.listen(sync_engine, "handle_error", keep_full_message)
        for setup in ("first_connect", "connect"):  # before the dialect's own listeners run their queries
            event.listen(sync_engine, setup, remember_connecting, insert=True)
        event.listen(sync_engine, "checkout", forget_connecting)
        keep_message_before_closing(sync_engine.dialect)
        self.connections = ConnectionCounter().attach(sync_engine)
        pool_ = sync_engine.pool
        Gauge(metrics.POOL_CHECKED_OUT, "Connections checked out of the pool", registry=self.registry).set_function(
            lambda: self.checked_out
        )
        Gauge(
            metrics.POOL_PEAK_CHECKED_OUT, "Most connections checked out at once", registry=self.registry
        ).set_function(lambda: self.peak_checked_out)
        if isinstance(pool_, pool.QueuePool):
            Gauge(
                metrics.POOL_OVERFLOW, "QueuePool overflow (starts at -pool_size)", registry=self.registry
            ).set_function(pool_.overflow)
            Gauge(metrics.POOL_IDLE, "Connections idle in the pool", registry=self.registry).set_function(
                pool_.checkedin
            )

    @property
    def current_phase(self) -> ReplicaPhase:
        return self.metrics.phase

    def _set_phase(self, phase: ReplicaPhase) -> None:
        self.metrics.set_phase(phase)

    def _on_checkout(self, *_args: object) -> None:
        with self.lock:
            self.checked_out += 1
            self.peak_checked_out = max(self.peak_checked_out, self.checked_out)

    def _on_checkin(self, *_args: object) -> None:
        with self.lock:
            self.checked_out -= 1

    def outcome_counts(self) -> dict[str, int]:
        with self.lock:
            tallies = list(self.tallies)
        return {outcome: sum(t[i] for t in tallies) for i, outcome in enumerate(OUTCOMES)}

    def measures(self) -> Measures:
        with self.lock:
            timings = list(self.timings)
            started, ended = self.work_started_at, self.work_ended_at
        m = Measures(Histogram(self.edges), Histogram(self.edges), work_started_at=started, work_ended_at=ended)
        for latency, wait, extremes in timings:
            m.latency.merge(Histogram(self.edges, list(latency), extremes[LAT_SUM], extremes[LAT_MAX]))
            m.checkout_wait.merge(Histogram(self.edges, list(wait), extremes[WAIT_SUM], extremes[WAIT_MAX]))
        return m

    def record_error(self, tally: list[int], outcome: str, exc: BaseException) -> None:
        with self.lock:
            tally[OUTCOME_INDEX[outcome]] += 1
            if self.first_error is None:
                self.first_error = short_message(exc)
                self.first_error_class = outcome
                self.first_error_at = time.time()

    def caller(self) -> None:
        """One caller thread. The statement runs as raw SQL (``exec_driver_sql``): sent as written, with
        no bind-parameter parsing (``:word`` in a JSON or time literal, ``%`` in a LIKE pattern stay
        literal); an invalid statement fails, and is counted, at each attempt.

        Three clock reads per attempt: ``t0`` at the checkout request, ``t1`` once checked out (the
        ``with`` body starts), ``t2`` after the commit; a failed attempt's wait runs until it failed."""
        statements, begin, perf = self.cfg.statements(), self.engine.begin, time.perf_counter
        caller = CallerTally(self)
        try:
            while caller.more():
                t0 = t1 = perf()
                try:
                    with begin() as conn:
                        t1 = perf()
                        for statement in statements:
                            conn.exec_driver_sql(statement)
                except Exception as exc:  # noqa: BLE001 - every failure is an outcome to count, not a crash of the thread
                    if caller.failed(t0, t1, exc):
                        return
                    continue
                caller.succeeded(t0, t1, perf())
        finally:
            caller.done()

    async def caller_async(self) -> None:
        """``caller`` as a task on the replica's event loop (asyncpg): the same attempts, clocks and tallies."""
        statements, begin, perf = self.cfg.statements(), self.engine.begin, time.perf_counter
        caller = CallerTally(self)
        try:
            while caller.more():
                t0 = t1 = perf()
                try:
                    async with begin() as conn:
                        t1 = perf()
                        for statement in statements:
                            await conn.exec_driver_sql(statement)
                except Exception as exc:  # noqa: BLE001 - counted like the threads' failures
                    if caller.failed(t0, t1, exc):
                        return
                    continue
                caller.succeeded(t0, t1, perf())
        finally:
            caller.done()

    def summary(self, points: bool = True) -> ReplicaSummary:
        """``points=False``: the connections' maximum and totals without their timeline (cheap)."""
        m = self.measures()
        return ReplicaSummary(
            replica=self.cfg.app_name,
            phase=self.current_phase,
            outcomes=self.outcome_counts(),
            first_error=self.first_error,
            first_error_class=self.first_error_class,
            first_error_at=self.first_error_at,
            peak_checked_out=self.peak_checked_out,
            started_at=self.started_at,
            work_done_at=self.work_done_at,
            finished_at=now_iso() if self.current_phase in FINISHED else None,
            latency=m.latency,
            checkout_wait=m.checkout_wait,
            work_started_at=m.work_started_at,
            work_ended_at=m.work_ended_at,
            connections=self.connections.timeline(points),
        )

    def summary_json(self) -> str:
        return self.summary().to_text()

    def write_summary(self) -> None:
        if self.publish is not None:  # a worker's pipe: whole, the timeline exact, for the parent to merge
            self.publish(self.summary().to_text(limit=None))
        elif self.cfg.summary_path:
            write_summary_file(self.cfg.summary_path, self.summary_json())

    def run(self) -> int:
        self._set_phase(RUNNING)
        if self.cfg.driver == ASYNC_DRIVER:
            work_done, held = threading.Event(), threading.Event()
            loop_thread = threading.Thread(
                target=asyncio.run,
                args=(self._async_lifecycle(work_done, held),),
                daemon=True,
                name="poolbench-event-loop",
            )
            loop_thread.start()
            threads = [loop_thread]
            while not work_done.is_set() and loop_thread.is_alive():
                if self.crashed.wait(0.02):
                    return self._crash()
                if self.stop.is_set():
                    break
        else:
            threads = [threading.Thread(target=self.caller, daemon=True) for _ in range(self.cfg.threads)]
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
        self._set_phase(HOLDING)
        self.write_summary()
        self.stop.wait(self.cfg.hold_seconds)
        if self.cfg.driver == ASYNC_DRIVER:
            held.set()  # the event loop disposes of its own engine (its connections belong to that loop)
            threads[0].join(10)
        else:
            self.engine.dispose()
        self._set_phase(DONE)
        self.write_summary()
        if not self.cfg.exit_after_hold:
            self.stop.wait()
        return 0

    async def _async_lifecycle(self, work_done: threading.Event, held: threading.Event) -> None:
        """asyncpg: the callers as tasks, then the hold (the pool keeps its ghosts), then dispose, all on
        the one event loop the connections belong to."""
        await asyncio.gather(*(self.caller_async() for _ in range(self.cfg.threads)))
        work_done.set()
        await asyncio.get_running_loop().run_in_executor(None, held.wait)
        await self.engine.dispose()

    def _crash(self) -> int:
        """``onError: crash``: the replica dies on its first failed attempt (its work ends there too:
        the other threads are not waited for beyond ``CRASH_SETTLE_SECONDS``: each ends after its attempt)."""
        deadline = time.monotonic() + CRASH_SETTLE_SECONDS
        while self.threads_finished < self.cfg.threads and time.monotonic() < deadline:
            time.sleep(0.005)
        with self.lock:
            if self.work_ended_at is None:
                self.work_ended_at = time.time()
        self.connections.exiting()
        self._set_phase(CRASHED)
        self.write_summary()
        return 1
