"""The client witness against a real PostgreSQL: each replica's count of its pool's real connections
(pool events) agrees with the server (its backends, its log's authorizations) and with the pool
arithmetic, in every path a connection opens or closes by."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

import psycopg2
import pytest
from sqlalchemy import create_engine, event, pool

from poolbench.core.benchmark import ReplicaReport, aggregate_reports
from poolbench.core.budget import per_replica_idle, per_replica_peak, predict
from poolbench.core.contracts.phases import HOLDING
from poolbench.core.contracts.summary import SUMMARY_LIMIT, ReplicaSummary
from poolbench.core.results import StepResult
from poolbench.core.serverlog import SERVER_LOG_SETTINGS
from poolbench.core.spec import PoolBenchmarkSpec, parse_document
from poolbench.core.workload_env import workload_config, workload_env
from poolbench.local import runner
from tests.conftest import make_doc
from workload.connections import ConnectionCounter
from workload.replica import Replica

if TYPE_CHECKING:
    from poolbench.local.embedded import LocalPostgres

pytestmark = pytest.mark.postgres


def start_server(max_connections: int) -> LocalPostgres:
    from poolbench.local.embedded import LocalPostgres

    return LocalPostgres(max_connections=max_connections, settings=dict(SERVER_LOG_SETTINGS)).start()


@pytest.fixture(scope="module")
def logged_pg() -> Iterator[LocalPostgres]:
    """A server that logs every connection, with room for three pools of fifteen."""
    pg = start_server(60)
    yield pg
    pg.stop()


def target(pg: LocalPostgres, monkeypatch: pytest.MonkeyPatch, spec: PoolBenchmarkSpec) -> None:
    for name, value in {**pg.client_env(), **workload_env(spec)}.items():
        if name.startswith("PG"):
            monkeypatch.setenv(name, value)


def server_backends(pg: LocalPostgres, app_name: str) -> int:
    conn = psycopg2.connect(host=pg.host, port=pg.port, user="postgres", dbname="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app_name,))
            row = cur.fetchone()
            return int(row[0]) if row else -1
    finally:
        conn.close()


def settled_backends(pg: LocalPostgres, app_name: str, expected: int, within_seconds: float = 15.0) -> int:
    """The backends under ``app_name`` once the closed ones have exited: a backend ends after its client
    closes, on the server's own time (later on a loaded machine). Waits, bounded, for ``expected``."""
    deadline = time.monotonic() + within_seconds
    count = server_backends(pg, app_name)
    while count != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        count = server_backends(pg, app_name)
    return count


def authorizations(pg: LocalPostgres, app_name: str) -> int:
    """The server log's count of sessions it let in under ``app_name``."""
    time.sleep(0.3)  # the log is written by the backends themselves: let the last lines land
    text = pg.log_path.read_text(errors="replace")
    return sum(
        1
        for line in text.splitlines()
        if "connection authorized:" in line
        and (line.endswith(f"application_name={app_name}") or f"application_name={app_name} " in line)
    )


def spec_of(**workload: object) -> PoolBenchmarkSpec:
    return parse_document(make_doc(name="ct", postgres={"maxConnections": 60}, workload=workload)).spec


def in_process(spec: PoolBenchmarkSpec, name: str) -> tuple[Replica, list[str]]:
    """A replica in this process; what it publishes (its whole summaries) is kept."""
    published: list[str] = []
    cfg = replace(workload_config(spec), app_name=name, exit_after_hold=True)
    return Replica(cfg, publish=published.append), published


def last_summary(published: list[str]) -> ReplicaSummary:
    summary = ReplicaSummary.parse(published[-1])
    assert summary is not None
    return summary


def test_queuepool_overflow_opens_fifteen_and_closes_back_to_the_five_it_keeps(
    logged_pg: LocalPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = spec_of(
        threads=15,
        iterations=2,
        holdSeconds=1.5,
        statement="SELECT pg_sleep(0.3)",
        engine={"poolSize": 5, "maxOverflow": 10},
    )
    target(logged_pg, monkeypatch, spec)
    replica, published = in_process(spec, "ct-overflow")
    worker = threading.Thread(target=replica.run)
    worker.start()
    while replica.current_phase != HOLDING and worker.is_alive():
        time.sleep(0.01)
    # Holding: the overflow went back and was closed at checkin; the pool keeps its five, as the server shows.
    assert replica.connections.open == per_replica_idle(spec) == 5
    assert settled_backends(logged_pg, "ct-overflow", 5) == 5
    worker.join(30)
    said = last_summary(published).connections
    assert said is not None
    assert said.exact
    assert said.max_open == per_replica_peak(spec) == 15
    assert said.counts[-6:] == (5, 4, 3, 2, 1, 0)  # the kept five, closed one by one by dispose
    assert said.connects == said.closes == authorizations(logged_pg, "ct-overflow")


def test_three_replicas_peak_at_what_the_pool_arithmetic_predicts(
    logged_pg: LocalPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = spec_of(
        threads=15,
        iterations=3,
        holdSeconds=0.5,
        statement="SELECT pg_sleep(0.5)",
        engine={"poolSize": 5, "maxOverflow": 10},
    )
    target(logged_pg, monkeypatch, spec)
    replicas = [in_process(spec, f"ct-three-{i}") for i in range(3)]
    workers = [threading.Thread(target=r.run) for r, _ in replicas]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    summaries = [last_summary(published) for _, published in replicas]
    reports = [ReplicaReport.from_summary(f"ct-three-{i}", s) for i, s in enumerate(summaries)]
    step = aggregate_reports(StepResult(replicas=3), reports)
    assert step.client_peak_connections == predict(spec, 3).peak == 45
    assert step.client_peak_exact is True
    assert step.client_connects == sum(authorizations(logged_pg, f"ct-three-{i}") for i in range(3))


def test_nullpool_churn_stays_within_its_threads_and_its_summary_within_4096_bytes(
    logged_pg: LocalPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = spec_of(threads=4, iterations=150, holdSeconds=0, statement="SELECT 1", engine={"poolClass": "NullPool"})
    target(logged_pg, monkeypatch, spec)
    replicas = [in_process(spec, f"ct-churn-{i}") for i in range(2)]
    workers = [threading.Thread(target=r.run) for r, _ in replicas]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    reports = []
    for i, (replica, published) in enumerate(replicas):
        whole = last_summary(published)
        text = replica.summary_json()  # what a termination message carries
        assert len(text.encode()) <= SUMMARY_LIMIT
        capped = ReplicaSummary.parse(text)
        assert capped is not None
        assert whole.connections is not None
        assert capped.connections is not None
        assert whole.connections.exact
        assert len(whole.connections.counts) == 2 * 600  # a connect and a close per statement
        assert not capped.connections.exact  # coarsened into buckets to fit
        assert capped.connections.max_open == whole.connections.max_open <= per_replica_peak(spec) == 4
        ok = whole.outcomes["ok"]
        assert ok == 4 * 150
        assert capped.connections.connects == ok == authorizations(logged_pg, f"ct-churn-{i}")
        reports.append(ReplicaReport.from_summary(f"ct-churn-{i}", capped))
    step = aggregate_reports(StepResult(replicas=2), reports)
    assert step.client_peak_exact is False
    assert step.client_peak_connections is not None
    assert step.client_peak_connections <= predict(spec, 2).peak == 8
    assert step.client_connects == 2 * 600


def test_every_path_a_connection_closes_by_is_counted_once(logged_pg: LocalPostgres) -> None:
    def engine(**kwargs: object) -> tuple[object, ConnectionCounter]:
        e = create_engine(
            f"postgresql+psycopg2://postgres@{logged_pg.host}:{logged_pg.port}/postgres",
            connect_args={"application_name": "ct-paths"},
            **kwargs,
        )
        return e, ConnectionCounter().attach(e)

    def terminate(pid: int) -> None:
        conn = psycopg2.connect(host=logged_pg.host, port=logged_pg.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
        conn.close()
        while server_backends(logged_pg, "ct-paths") > 0:
            time.sleep(0.01)

    # pool_pre_ping finds the server ended the connection: invalidate, close, connect again.
    e, counter = engine(pool_size=2, pool_pre_ping=True)
    with e.connect() as c:  # type: ignore[attr-defined]
        pid = c.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    terminate(pid)  # while the connection is idle in the pool
    with e.connect() as c:  # type: ignore[attr-defined]
        c.exec_driver_sql("SELECT 1")
    assert (counter.open, counter.connects, counter.closes) == (1, 2, 1)
    assert settled_backends(logged_pg, "ct-paths", 1) == 1
    e.dispose()  # type: ignore[attr-defined]
    assert (counter.open, counter.closes) == (0, 2)
    # Without the ping the statement fails on the dead connection: a hard invalidation closes it.
    e, counter = engine(pool_size=2)
    with e.connect() as c:  # type: ignore[attr-defined]
        pid = c.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    terminate(pid)
    with pytest.raises(Exception, match="terminat|closed"), e.connect() as c:  # type: ignore[attr-defined]
        c.exec_driver_sql("SELECT 1")
    assert (counter.open, counter.connects, counter.closes) == (0, 1, 1)
    # Recycled (pool_recycle), detached, and a connection whose own connect events failed.
    e, counter = engine(pool_size=2, pool_recycle=1)
    with e.connect():  # type: ignore[attr-defined]
        pass
    time.sleep(1.1)
    with e.connect() as c:  # type: ignore[attr-defined]
        c.detach()
    assert (counter.open, counter.connects, counter.closes) == (0, 2, 2)

    def fails(*_args: object) -> None:
        raise RuntimeError("a connect listener failed")

    event.listen(e, "connect", fails)
    with pytest.raises(RuntimeError):
        e.connect()  # type: ignore[attr-defined]
    assert (counter.open, counter.connects, counter.closes) == (0, 3, 3)
    assert settled_backends(logged_pg, "ct-paths", 0) == 0
    assert max(counter.counts) == counter.max_open == 1


def test_refused_connects_are_never_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    pg = start_server(6)
    try:
        spec = parse_document(
            make_doc(
                name="ct",
                postgres={"maxConnections": 6},
                workload={
                    "threads": 10,
                    "iterations": 4,
                    "holdSeconds": 0,
                    "onError": "count",
                    "statement": "SELECT pg_sleep(0.2)",
                    "engine": {"poolClass": "NullPool"},
                },
            )
        ).spec
        target(pg, monkeypatch, spec)
        replica, published = in_process(spec, "ct-refused")
        replica.run()
        summary = last_summary(published)
        said = summary.connections
        assert said is not None
        assert summary.outcomes["tooManyClients"] > 0
        assert said.connects == summary.outcomes["ok"] == authorizations(pg, "ct-refused")
        assert said.max_open <= 6
        assert said.counts[-1] == 0
    finally:
        pg.stop()

    # The engine refused outright: nothing was opened, nothing counted.
    e = create_engine("postgresql+psycopg2://postgres@127.0.0.1:1/postgres", poolclass=pool.NullPool)
    counter = ConnectionCounter().attach(e)
    with pytest.raises(Exception, match="refused|failed"):
        e.connect()
    assert (counter.connects, counter.closes, len(counter.counts)) == (0, 0, 0)


@pytest.mark.parametrize("processes", [1, 2])
def test_crashing_replicas_never_count_more_connections_than_the_server_let_in(processes: int) -> None:
    # 3 replicas × 2 processes × 3 connections (or 3 × 6) = 18 on a server with 7 usable: refused, and each
    # replica dies on its first refusal. Its connections close with it: the sum never passes the usable slots.
    doc = make_doc(
        name=f"ctcrash{processes}",
        steps=[3],
        stepTimeoutSeconds=60,
        postgres={"maxConnections": 8},
        workload={
            "threads": 6 // processes,
            "processes": processes,
            "iterations": 20,
            "holdSeconds": 1,
            "onError": "crash",
            "statement": "SELECT pg_sleep(0.1)",
            "engine": {"poolSize": 6 // processes, "maxOverflow": 0},
        },
    )
    step = runner.run_local(parse_document(doc)).status.variants[0].steps[0]
    assert step.outcome == "Failed"
    assert step.first_error_class == "tooManyClients"
    assert step.usable_connections == 7
    if processes == 1:  # each replica said its last word before it exited
        assert step.client_peak_exact is True
    if step.client_peak_connections is None:
        # A worker its replica killed while it worked said nothing of what it opened since its last report.
        assert processes == 2
        return
    assert 0 < step.client_peak_connections <= step.usable_connections
    assert step.client_connects is not None
    assert step.client_connects >= step.client_peak_connections


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_each_driver_counts_its_pools_connections(driver: str) -> None:
    # Per replica: QueuePool min(6 callers, 3 + 2) = 5 connections; 2 replicas. asyncpg: its adapted pool's events.
    doc = make_doc(
        name=f"ctdrv-{driver}",
        steps=[2],
        stepTimeoutSeconds=60,
        postgres={"maxConnections": 40},
        workload={
            "driver": driver,
            "threads": 6,
            "iterations": 6,
            "holdSeconds": 1,
            "statement": "SELECT pg_sleep(0.3)",
            "engine": {"poolSize": 3, "maxOverflow": 2},
        },
    )
    step = runner.run_local(parse_document(doc)).status.variants[0].steps[0]
    assert step.outcome == "Passed", step.reason
    assert step.client_peak_connections == step.predicted_peak == 10
    assert step.client_peak_exact is True
    assert step.client_connects is not None
    assert step.client_connects >= 10
