"""The three witnesses of a step's connections against a real PostgreSQL: the server's log, the reads and
the pools' own events agree where the pool arithmetic knows the answer."""

from __future__ import annotations

import pytest

from poolbench.core.results import StepResult
from poolbench.core.spec import parse_document
from poolbench.local import runner
from tests.conftest import make_doc

pytestmark = pytest.mark.postgres


def three_pools_of_five(name: str, settings: dict[str, str] | None = None) -> StepResult:
    """Three replicas, each a QueuePool of min(5 threads, 5 + 0) = 5 connections kept idle through the
    hold: 3 × 5 = 15, opened once each, held together long enough for a read to see them all."""
    doc = make_doc(
        name=name,
        steps=[3],
        stepTimeoutSeconds=60,
        sampling={"intervalMs": 50},
        postgres={"maxConnections": 40, "settings": settings or {}},
        workload={
            "threads": 5,
            "iterations": 4,
            "holdSeconds": 1,
            "statement": "SELECT pg_sleep(0.1)",
            "engine": {"poolClass": "QueuePool", "poolSize": 5, "maxOverflow": 0},
        },
    )
    return runner.run_local(parse_document(doc)).status.variants[0].steps[0]


def test_three_replicas_of_five_connections_are_fifteen_to_every_witness() -> None:
    step = three_pools_of_five("witness3")
    assert step.peak_source == "serverLog", step.peak_source_reason
    assert step.predicted_peak == 15
    assert step.peak_connections == step.client_peak_connections == step.sampled_peak_connections == 15
    assert step.client_peak_exact is True
    assert step.client_connects == 15
    assert step.exiting_at_peak == step.server_ended_connections == 0
    assert step.witness_disagreement is None
    assert step.outcome == "Passed", step.reason
    assert step.to_json()["serverEndedConnections"] == 0


def test_connections_the_server_ends_itself_are_counted_beside_the_pools() -> None:
    # The server ends each idle connection after 300 ms (FATAL 57P05); the pools keep counting theirs until
    # they next use them, so the step says how many the server ended, and no witness disagrees.
    step = three_pools_of_five("witnessidle", {"idle_session_timeout": "300ms"})
    assert step.peak_source == "serverLog", step.peak_source_reason
    assert step.peak_connections == step.client_peak_connections == 15
    assert step.server_ended_connections == 15  # every one, idle through the hold
    assert step.witness_disagreement is None
