"""Worker processes per replica (``workload.processes``) against a real PostgreSQL: each process forked
after the engine is configured opens its own pool, so a replica holds processes × its pool."""

from __future__ import annotations

import pytest

from poolbench.core.spec import parse_document
from poolbench.local import runner
from tests.conftest import make_doc

pytestmark = pytest.mark.postgres


def test_three_processes_each_open_their_own_pool() -> None:
    # Per process: QueuePool min(4 threads, 2 + 1) = 3 connections, 2 kept; × 3 processes × 2 replicas.
    doc = make_doc(
        name="procs",
        steps=[2],
        stepTimeoutSeconds=60,
        sampling={"intervalMs": 20},
        postgres={"maxConnections": 60},
        workload={
            "threads": 4,
            "processes": 3,
            "iterations": 10,
            "holdSeconds": 2,
            "statement": "SELECT pg_sleep(0.1)",
            "engine": {"poolSize": 2, "maxOverflow": 1},
        },
    )
    status = runner.run_local(parse_document(doc)).status
    step = status.variants[0].steps[0]
    assert step.outcome == "Passed", step.reason
    assert step.predicted_peak == step.peak_connections == 18
    assert step.predicted_idle == step.idle_at_end == 12
    assert step.queries == 2 * 3 * 4 * 10  # every worker's statements, merged into the replica's summary
    assert step.latency_histogram.histogram().total == step.queries
    assert step.peak_by_replica == {"pb-procs-s1-r0": 9, "pb-procs-s1-r1": 9}
    assert status.verdict is not None
    assert "each may open 9" in status.verdict.summary
    # The pools' own count: each worker sends its parent its whole timeline, so the replica merges exactly.
    assert step.client_peak_connections == step.predicted_peak == 18
    assert step.client_peak_exact is True
    assert step.client_connects is not None
    assert step.client_connects >= 18
    as_json = step.to_json()
    assert as_json["clientPeakConnections"] == 18
    assert as_json["clientPeakExact"] is True


def test_a_crashing_worker_crashes_its_replica() -> None:
    # 2 replicas × 2 processes × 3 connections = 12 on a server with 7 usable: someone is refused, and
    # with onError crash the worker dies, taking its replica (all its processes) down.
    doc = make_doc(
        name="proccrash",
        steps=[2],
        stepTimeoutSeconds=60,
        postgres={"maxConnections": 8},
        workload={
            "threads": 3,
            "processes": 2,
            "iterations": 20,
            "holdSeconds": 2,
            "onError": "crash",
            "statement": "SELECT pg_sleep(0.1)",
            "engine": {"poolSize": 3, "maxOverflow": 0},
        },
    )
    step = runner.run_local(parse_document(doc)).status.variants[0].steps[0]
    assert step.outcome == "Failed"
    assert step.first_error_class == "tooManyClients"
    assert step.crashed_replicas >= 1
    assert step.peak_connections <= 7
