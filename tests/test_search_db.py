"""The breaking-point search against a real PostgreSQL, on a configuration whose answer the pool
arithmetic knows: 4 connections per replica and 19 usable slots break between 4 and 5 replicas."""

from __future__ import annotations

import math

import pytest

from poolbench.core.spec import parse_document
from poolbench.local import runner
from tests.conftest import make_doc

pytestmark = pytest.mark.postgres


def test_a_search_between_1_and_30_finds_the_exact_breaking_point() -> None:
    doc = make_doc(
        name="search",
        steps={"search": {"min": 1, "max": 30}},
        stepTimeoutSeconds=60,
        postgres={"maxConnections": 20},  # 20 − the monitor = 19 usable: 4 × 4 fit, 5 × 4 do not
        workload={
            "threads": 4,
            "iterations": 3,
            "holdSeconds": 1,
            "onError": "count",
            "statement": "SELECT pg_sleep(0.3)",
            "engine": {"poolSize": 4, "maxOverflow": 0},
        },
    )
    status = runner.run_local(parse_document(doc)).status
    verdict = status.verdict
    assert verdict is not None
    assert (verdict.max_safe_replicas, verdict.first_failing_replicas) == (4, 5)
    assert verdict.predicted_max_safe_replicas == 4
    assert len(status.variants[0].steps) <= math.ceil(math.log2(30)) + 2
    ran = len(status.variants[0].steps)  # the boundary was found: the phase says so, and the progress ends at n/n
    assert (status.phase, status.progress, status.total_steps) == ("BoundaryFound", f"{ran}/{ran}", ran)
    passing = next(s for s in status.variants[0].steps if s.replicas == 4)
    failing = next(s for s in status.variants[0].steps if s.replicas == 5)
    assert passing.outcome == "Passed"
    assert passing.peak_connections == 16
    assert failing.outcome == "Failed"
    assert failing.first_error_class == "tooManyClients"
    assert failing.peak_connections == 19  # every usable slot taken
