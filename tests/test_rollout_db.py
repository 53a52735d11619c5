"""A rolling update measured for real against PostgreSQL: the old replicas work while the surge pods
start beside them, so the server holds both, as the rollout arithmetic predicts."""

from __future__ import annotations

import pytest

from poolbench.core.spec import parse_document
from poolbench.local import runner
from tests.conftest import make_doc

pytestmark = pytest.mark.postgres


def test_a_rolling_update_peaks_at_old_plus_surge_pods() -> None:
    # 3 connections per replica; 2 replicas pass (6 of 19 usable); a rollout with maxSurge 1 runs
    # 2 old + 1 new replicas at once: 9 connections, as predicted.
    doc = make_doc(name="rollout", steps=[2], stepTimeoutSeconds=60, sampling={"intervalMs": 20},
                   postgres={"maxConnections": 20}, rollout={"maxSurge": 1, "measure": True},
                   workload={"threads": 3, "durationSeconds": 3, "holdSeconds": 1,
                             "statement": "SELECT pg_sleep(0.05)", "engine": {"poolSize": 3, "maxOverflow": 0}})
    status = runner.run_local(parse_document(doc)).status
    assert [s.replicas for s in status.steps] == [2, 3]
    rest, rollout = status.steps
    assert rest.rollout_from is None and rest.outcome == "Passed" and rest.peak_connections == 6
    assert rollout.rollout_from == 2 and rollout.outcome == "Passed", rollout.reason
    assert rollout.predicted_peak == rollout.peak_connections == 9
    verdict = status.verdict
    assert verdict is not None and verdict.max_safe_replicas == 2  # the rollout step is not a plain step
    assert "A rolling update of 2 replicas (3 pods at once): peak 9 connections (predicted 9)" in verdict.summary
    assert "During a rolling update (maxSurge 1) at most 5 replicas fit" in verdict.summary  # (5 + 1) × 3 ≤ 19


def test_a_rollout_that_no_longer_fits_fails_while_the_count_at_rest_passed() -> None:
    # 3 replicas × 3 = 9 fit in 10 usable; rolling with 2 surge pods needs 15: refused.
    doc = make_doc(name="rollfail", steps=[3], stepTimeoutSeconds=60, postgres={"maxConnections": 11},
                   rollout={"maxSurge": 2, "measure": True},
                   workload={"threads": 3, "durationSeconds": 3, "holdSeconds": 1, "onError": "count",
                             "statement": "SELECT pg_sleep(0.05)", "engine": {"poolSize": 3, "maxOverflow": 0}})
    status = runner.run_local(parse_document(doc)).status
    rest, rollout = status.steps
    assert rest.outcome == "Passed" and rollout.outcome == "Failed"
    assert rollout.first_error_class == "tooManyClients" and rollout.peak_connections == 10
    assert status.verdict is not None and status.verdict.max_safe_replicas == 3
    assert status.phase == "Failed"
