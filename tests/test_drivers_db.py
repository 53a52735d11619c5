"""psycopg 3 and asyncpg workloads against a real PostgreSQL: the same pool arithmetic, measured, and
their refusals classified (each driver words and types them its own way)."""

from __future__ import annotations

import pytest

from poolbench.core.spec import parse_document
from poolbench.local import runner
from tests.conftest import make_doc

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_measured_equals_predicted(driver: str) -> None:
    # Per replica: QueuePool min(6 callers, 3 + 2) = 5 connections, 3 kept.
    doc = make_doc(name=f"drv-{driver}", steps=[2, 5], stepTimeoutSeconds=60, sampling={"intervalMs": 20},
                   postgres={"maxConnections": 40}, stopOnFailure=False,
                   workload={"driver": driver, "threads": 6, "iterations": 10, "holdSeconds": 1,
                             "statement": "SELECT pg_sleep(0.1)", "engine": {"poolSize": 3, "maxOverflow": 2}})
    status = runner.run_local(parse_document(doc)).status
    assert [s.outcome for s in status.steps] == ["Passed", "Passed"], [s.reason for s in status.steps]
    assert [s.peak_connections for s in status.steps] == [s.predicted_peak for s in status.steps] == [10, 25]
    assert [s.idle_at_end for s in status.steps] == [s.predicted_idle for s in status.steps] == [6, 15]
    assert [s.queries for s in status.steps] == [2 * 6 * 10, 5 * 6 * 10]
    assert all(s.latency_ms.p50 >= 100 for s in status.steps)


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
@pytest.mark.parametrize(("role", "expected"), [("superuser", "tooManyClients"), ("app", "reservedSlots")])
def test_refusals_are_classified_for_each_driver(driver: str, role: str, expected: str) -> None:
    # 3 replicas × 4 connections on 8 slots: somebody is refused, in the driver's own words and types.
    doc = make_doc(name=f"refuse-{driver}-{role}", steps=[3], stepTimeoutSeconds=60,
                   postgres={"maxConnections": 8, "superuserReservedConnections": 3},
                   workload={"driver": driver, "threads": 4, "iterations": 10, "holdSeconds": 1, "onError": "count",
                             "role": role, "statement": "SELECT pg_sleep(0.2)",
                             "engine": {"poolSize": 4, "maxOverflow": 0}})
    step = runner.run_local(parse_document(doc)).status.steps[0]
    assert step.outcome == "Failed"
    assert step.first_error_class == expected, step.first_error
    assert getattr(step.errors, {"tooManyClients": "too_many_clients", "reservedSlots": "reserved_slots"}[expected]) > 0
