"""Pooler placement and session mode against a real PostgreSQL and real PgBouncer instances: each
connection lands on an instance at random (as through a Kubernetes Service), and the prediction and
the verdict say what the run then does.

The shapes make the answers known: a QueuePool with ``poolSize == threads`` and no overflow opens
exactly ``threads`` client connections per replica and keeps them all; ``poolSize 1, maxOverflow 2``
opens 3 and keeps 1.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest

from poolbench.core.results import BenchmarkStatus, StepResult
from poolbench.core.sampling import PoolerRead
from poolbench.core.spec import parse_document
from poolbench.db.pooler import PoolerProbe
from poolbench.local import runner
from tests.conftest import make_doc

pytestmark = pytest.mark.postgres


class WatchingRunner(runner.LocalRunner):
    """The local runner, keeping the most clients each PgBouncer instance held at once, as the monitor's
    own reads of every instance's SHOW POOLS saw them (every sampling interval). Read through the
    monitor's consoles, not consoles of its own: an admin console is a client of the instance too, and
    one more would take a slot of ``maxClientConn`` the prediction gives the workload."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.per_instance: list[int] = []

    def execute(self) -> Any:
        read_instance = PoolerProbe.read_instance

        def recording(probe: PoolerProbe, i: int) -> PoolerRead:
            read = read_instance(probe, i)
            if read.ok:
                self.per_instance += [0] * (i + 1 - len(self.per_instance))
                self.per_instance[i] = max(self.per_instance[i], read.clients)
            return read

        with mock.patch.object(PoolerProbe, "read_instance", recording):
            return super().execute()


def run(
    name: str,
    *,
    replicas: list[int],
    threads: int,
    pooler: dict[str, Any],
    engine: dict[str, Any] | None = None,
    hold: float = 1.0,
    iterations: int = 5,
    sleep: float = 0.1,
    driver: str = "psycopg2",
    processes: int = 1,
) -> tuple[BenchmarkStatus, WatchingRunner]:
    doc = make_doc(
        name=name,
        steps=replicas,
        stepTimeoutSeconds=60,
        sampling={"intervalMs": 20},
        postgres={"maxConnections": 40},
        stopOnFailure=False,
        variants=[{"name": "pooled", "pooler": {"type": "PgBouncer", **pooler}}],
        workload={
            "threads": threads,
            "iterations": iterations,
            "holdSeconds": hold,
            "driver": driver,
            "processes": processes,
            "statement": f"SELECT pg_sleep({sleep})",
            "engine": engine or {"poolSize": threads, "maxOverflow": 0},
        },
    )
    watching = WatchingRunner(parse_document(doc))
    return watching.execute().status, watching


def only(status: BenchmarkStatus) -> tuple[StepResult, Any]:
    variant = status.variants[0]
    assert variant.verdict is not None
    return variant.steps[0], variant.verdict


def test_one_replicas_connections_spread_over_both_instances() -> None:
    # 1 replica × 20 clients, 2 instances taking 30 clients each: fits whatever the placement (20 ≤ 30),
    # and the connections reach both instances (all 20 on one: chance 2 / 2^20).
    status, watching = run(
        "spread",
        replicas=[1],
        threads=20,
        pooler={"poolMode": "transaction", "defaultPoolSize": 4, "maxClientConn": 31, "replicas": 2},
    )
    step, verdict = only(status)
    assert step.pooler is not None, step
    assert step.outcome == "Passed", step.reason
    assert step.errors.total() == 0
    assert step.queries == 20 * 5
    assert step.pooler.client_peak_connections == step.pooler.predicted_client_peak == 20
    assert verdict.predicted_max_safe_replicas is not None
    assert verdict.predicted_max_safe_replicas >= 1
    assert len(watching.per_instance) == 2, watching.per_instance
    assert all(n >= 1 for n in watching.per_instance), watching.per_instance
    assert sum(watching.per_instance) >= 20
    assert "connections land on the 2 PgBouncer instances at random" in verdict.summary


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_every_driver_spreads_its_connections(driver: str) -> None:
    # The same placement for psycopg 3 and asyncpg (session mode: asyncpg's prepared statements stay on
    # their server connection): 16 clients of one replica reach both instances (all on one: 2 / 2^16).
    status, watching = run(
        f"spread-{driver}",
        replicas=[1],
        threads=16,
        driver=driver,
        pooler={"poolMode": "session", "defaultPoolSize": 16, "replicas": 2},
    )
    step, _ = only(status)
    assert step.pooler is not None, step
    assert step.outcome == "Passed", step.reason
    assert step.pooler.client_peak_connections == 16
    assert all(n >= 1 for n in watching.per_instance), watching.per_instance
    assert sum(watching.per_instance) >= 16, watching.per_instance


def test_more_clients_than_every_instance_takes_fail_as_predicted() -> None:
    # 3 replicas × 3 = 9 clients; 2 instances take 4 each (max_client_conn 5, one for the monitor):
    # 9 > 8 cannot fit wherever they land. Predicted: 1 replica (3 ≤ 4 on any one instance).
    status, _ = run(
        "overflow",
        replicas=[3],
        threads=3,
        pooler={"poolMode": "transaction", "defaultPoolSize": 10, "maxClientConn": 5, "replicas": 2},
    )
    step, verdict = only(status)
    assert step.outcome == "Failed"
    assert step.first_error_class == "poolerMaxClientConn"
    assert verdict.first_failing_replicas == 3
    assert verdict.predicted_max_safe_replicas == 1
    assert "at most 1 replica fits the poolers" in verdict.summary


def test_more_instances_than_replicas_is_not_predicted_safe() -> None:
    # 1 replica × 6 clients over 3 instances of 4: the total (12) fits, but one instance gets 5 or 6 of
    # them with chance 3 × 13/729 ≈ 5 %, so the arithmetic does not call even 1 replica safe. The run
    # itself passes unless that happens, and then it fails on max_client_conn, never otherwise.
    status, watching = run(
        "fewer",
        replicas=[1],
        threads=6,
        pooler={"poolMode": "transaction", "defaultPoolSize": 4, "maxClientConn": 5, "replicas": 3},
    )
    step, verdict = only(status)
    assert verdict.predicted_max_safe_replicas == 0
    assert "at most 0 replicas fit the poolers" in verdict.summary
    assert ("chance that one instance gets more than its 4 clients is below one in a million") in verdict.summary
    if step.outcome == "Failed":
        # Refused by the one instance that was full; its clients may leave before a read sees them all.
        assert step.first_error_class == "poolerMaxClientConn"
        assert max(watching.per_instance) <= 4
    else:
        assert step.outcome == "Passed", step.reason
        assert max(watching.per_instance) <= 4
        assert sum(watching.per_instance) >= 6


def test_session_mode_clients_wait_and_fit_when_the_kept_ones_do() -> None:
    # poolSize 1 + maxOverflow 2: each replica opens 3 clients and keeps 1. 2 replicas: 6 clients on 4
    # server connections (the 2 others wait until an overflow client disconnects), 2 kept < 4: passes.
    # Predicted: without waiting up to 1 replica, fails beyond 3 (4 kept hold all 4).
    status, _ = run(
        "sesswait",
        replicas=[2],
        threads=3,
        engine={"poolSize": 1, "maxOverflow": 2},
        pooler={"poolMode": "session", "defaultPoolSize": 4, "queryWaitTimeoutSeconds": 30},
    )
    step, verdict = only(status)
    assert step.pooler is not None, step
    assert step.outcome == "Passed", step.reason
    assert step.errors.total() == 0
    assert step.queries == 2 * 3 * 5
    assert step.peak_connections == 4
    assert step.pooler.client_peak_connections == 6
    assert step.pooler.waiting_peak >= 1
    assert step.pooler.max_wait_ms > 0
    assert step.idle_at_end == step.predicted_idle == 2
    assert verdict.max_safe_replicas == 2
    assert verdict.predicted_max_safe_replicas == 3
    assert "fits without waiting up to 1 replica, waits beyond" in verdict.summary
    assert "fails beyond 3 (the pools of 4 replicas keep 4 clients open for good" in verdict.summary


def test_session_mode_fails_when_the_kept_clients_hold_every_server_connection() -> None:
    # 1 replica × 3 threads, poolSize 2 + maxOverflow 1: 3 clients, 2 kept, on 2 server connections.
    # The 2 kept clients take both and never disconnect; the third thread's client waits at the pooler,
    # so its engine never returns it: it waits until query_wait_timeout (1 s) and is disconnected.
    status, _ = run(
        "sesskept",
        replicas=[1],
        threads=3,
        engine={"poolSize": 2, "maxOverflow": 1},
        sleep=0.02,
        pooler={"poolMode": "session", "defaultPoolSize": 2, "queryWaitTimeoutSeconds": 1},
    )
    step, verdict = only(status)
    assert step.pooler is not None, step
    assert step.outcome == "Failed"
    assert step.first_error_class == "poolerQueryWaitTimeout"
    assert step.pooler.predicted_outcome == "fails"
    assert verdict.first_failing_replicas == 1
    assert verdict.predicted_max_safe_replicas == 0
    assert (
        "fails from 1 replica (the pools of 1 replica keep 2 clients open for good, enough to hold all the"
        " pooler's 2 server connections: the other clients wait until query_wait_timeout (1 s) and are"
        " disconnected)"
    ) in verdict.summary


def test_a_reserve_that_opens_after_query_wait_timeout_serves_nobody() -> None:
    # The same 3 clients (2 kept) on defaultPoolSize 2 + reservePoolSize 1: PgBouncer opens the reserve
    # only for a client that waited reserve_pool_timeout (5 s), and query_wait_timeout (2 s) disconnects
    # the third client first. Predicted: fails from 1 replica, not "3 clients on 3 server connections: fits".
    status, _ = run(
        "sessres",
        replicas=[1],
        threads=3,
        engine={"poolSize": 2, "maxOverflow": 1},
        sleep=0.02,
        pooler={"poolMode": "session", "defaultPoolSize": 2, "reservePoolSize": 1, "queryWaitTimeoutSeconds": 2},
    )
    step, verdict = only(status)
    assert step.pooler is not None, step
    assert step.outcome == "Failed"
    assert step.first_error_class == "poolerQueryWaitTimeout"
    assert step.peak_connections == 2  # the reserve never opened
    assert step.pooler.predicted_outcome == "fails"
    assert verdict.first_failing_replicas == 1
    assert verdict.predicted_max_safe_replicas == 0
    assert (
        "enough to hold all the pooler's 2 server connections (its reserve of 1 opens only for a client that"
        " waited reserve_pool_timeout, 5 s: query_wait_timeout disconnects it first)"
    ) in verdict.summary


def test_transaction_mode_says_its_clients_queue_and_why_a_wait_timed_out() -> None:
    # 8 clients, 1 server connection, 0.3 s transactions: the last in the queue waits about 2 s, longer than
    # query_wait_timeout (1 s). The capacity fits; the prediction says the clients wait, and the verdict
    # says that the arithmetic counts connections, not how long a transaction holds one.
    status, _ = run(
        "txwait",
        replicas=[1],
        threads=8,
        iterations=2,
        sleep=0.3,
        pooler={"poolMode": "transaction", "defaultPoolSize": 1, "queryWaitTimeoutSeconds": 1},
    )
    step, verdict = only(status)
    assert step.pooler is not None, step
    assert step.outcome == "Failed"
    assert step.first_error_class == "poolerQueryWaitTimeout"
    assert step.pooler.predicted_outcome == "waits"
    assert step.pooler.predicted_client_peak == 8
    assert (
        "In transaction mode clients beyond the 1 server connection wait for a transaction to end, and these"
        " waited longer than query_wait_timeout (1 s): the arithmetic counts connections, not how long each"
        " transaction holds one"
    ) in verdict.summary


def test_a_query_wait_timeout_on_a_new_connection_is_classified_as_one() -> None:
    # 2 replicas × 3 worker processes × 2 threads, poolSize 1 + maxOverflow 1: 6 kept clients hold all 4
    # server connections. Some of the clients left waiting are new connections whose first queries (the
    # dialect's, before any statement) wait: PgBouncer's "query_wait_timeout" reaches them too, and
    # SQLAlchemy closes such a connection before its error handler runs. Every failure is the pooler's.
    status, _ = run(
        "qwtnew",
        replicas=[2],
        threads=2,
        processes=3,
        engine={"poolSize": 1, "maxOverflow": 1},
        sleep=0.03,
        hold=0.5,
        pooler={"poolMode": "session", "defaultPoolSize": 4, "queryWaitTimeoutSeconds": 2},
    )
    step, _ = only(status)
    assert step.outcome == "Failed", step.first_error
    assert step.first_error_class == "poolerQueryWaitTimeout", step.first_error
    assert step.errors.pooler_query_wait_timeout >= 1, (step.errors, step.first_error)
    assert step.errors.other == 0, (step.errors, step.first_error)


def test_session_mode_fails_when_the_kept_clients_outnumber_the_server_connections() -> None:
    # 2 replicas × 3 threads, poolSize 3: 6 clients kept open for good on 4 server connections: the 2
    # without one wait until query_wait_timeout (2 s) and are disconnected. Predicted: 1 replica.
    status, _ = run(
        "sessfail",
        replicas=[2],
        threads=3,
        hold=4.0,
        pooler={"poolMode": "session", "defaultPoolSize": 4, "queryWaitTimeoutSeconds": 2},
    )
    step, verdict = only(status)
    assert step.outcome == "Failed"
    assert step.first_error_class == "poolerQueryWaitTimeout"
    assert verdict.first_failing_replicas == 2
    assert verdict.predicted_max_safe_replicas == 1
    assert (
        "fits without waiting up to 1 replica, fails beyond (the pools of 2 replicas keep 6 clients open for"
        " good, enough to hold all the pooler's 4 server connections: the other clients wait until"
        " query_wait_timeout (2 s) and are disconnected)"
    ) in verdict.summary
