"""A rolling update measured for real against PostgreSQL: the old replicas work while the surge pods
start beside them, so the server holds both, as the rollout arithmetic predicts; when the old replicas
are gone before the surge connects, the step says so (Inconclusive), never Passed."""

from __future__ import annotations

import pytest

from poolbench.core.spec import parse_document
from poolbench.local import runner
from tests.conftest import make_doc

pytestmark = pytest.mark.postgres


def test_a_rolling_update_peaks_at_old_plus_surge_pods() -> None:
    # 3 connections per replica; 2 replicas pass (6 of 19 usable); a rollout with maxSurge 1 runs
    # 2 old + 1 new replicas at once: 9 connections, as predicted.
    doc = make_doc(
        name="rollout",
        steps=[2],
        stepTimeoutSeconds=60,
        sampling={"intervalMs": 20},
        postgres={"maxConnections": 20},
        rollout={"maxSurge": 1, "measure": True},
        workload={
            "threads": 3,
            "durationSeconds": 3,
            "holdSeconds": 1,
            "statement": "SELECT pg_sleep(0.05)",
            "engine": {"poolSize": 3, "maxOverflow": 0},
        },
    )
    status = runner.run_local(parse_document(doc)).status
    assert [s.replicas for s in status.variants[0].steps] == [2, 3]
    rest, rollout = status.variants[0].steps
    assert rest.rollout_from is None
    assert rest.outcome == "Passed"
    assert rest.peak_connections == 6
    assert rollout.rollout_from == 2, rollout.reason
    assert rollout.outcome == "Passed", rollout.reason
    assert rollout.predicted_peak == rollout.peak_connections == 9
    overlap = rollout.rollout_overlap  # read per application_name: r0, r1 old; r2 the surge pod
    assert overlap is not None
    assert overlap.achieved
    assert overlap.measured_by == "applicationName"
    assert (overlap.old_connections, overlap.old_connections_at_surge_peak, overlap.surge_peak_connections) == (6, 6, 3)
    assert {k: v for k, v in rollout.peak_by_replica.items()} == {
        "pb-rollout-s2-r0": 3,
        "pb-rollout-s2-r1": 3,
        "pb-rollout-s2-r2": 3,
    }
    verdict = status.verdict
    assert verdict is not None
    assert verdict.max_safe_replicas == 2
    assert "A rolling update of 2 replicas (3 pods at once): peak 9 connections (predicted 9)" in verdict.summary
    assert "During a rolling update (maxSurge 1) at most 5 replicas fit" in verdict.summary  # (5 + 1) × 3 ≤ 19
    assert verdict.summary.startswith("All steps passed up to 2 replicas")
    assert "2 replicas stay safe during a rolling update" in verdict.summary
    assert status.phase == "Completed"


def test_old_replicas_gone_before_the_surge_connects_make_the_rollout_inconclusive() -> None:
    # One SELECT 1 per thread and no hold: each old replica is done and has closed its pool within
    # milliseconds of connecting, before the surge pod (started once the old ones' work is done) opens
    # its own. No refusal happens, yet the server never holds old and new at once: no rollout was measured.
    doc = make_doc(
        name="rollgone",
        steps=[2],
        stepTimeoutSeconds=20,
        sampling={"intervalMs": 20},
        postgres={"maxConnections": 20},
        rollout={"maxSurge": 1, "measure": True},
        workload={
            "threads": 3,
            "iterations": 1,
            "holdSeconds": 0,
            "statement": "SELECT 1",
            "engine": {"poolSize": 3, "maxOverflow": 0},
        },
    )
    status = runner.run_local(parse_document(doc)).status
    rest, rollout = status.variants[0].steps
    assert rest.outcome == "Passed"
    assert rollout.rollout_from == 2
    assert rollout.errors.total() == 0
    assert rollout.outcome == "Inconclusive", rollout.reason
    overlap = rollout.rollout_overlap
    assert overlap is not None
    assert not overlap.achieved
    assert overlap.old_connections_at_surge_peak == 0
    assert overlap.old_connections <= 6
    assert rollout.reason is not None
    assert "did not overlap as in a rolling update" in rollout.reason
    assert rollout.peak_connections < rollout.predicted_peak == 9
    verdict = status.verdict
    assert verdict is not None
    assert verdict.max_safe_replicas == 2
    assert verdict.summary.startswith(
        "Every step at rest passed up to 2 replicas, but the rolling update of 2 replicas was inconclusive"
    )
    assert "whether 2 replicas stay safe during a rolling update was not measured" in verdict.summary
    assert status.phase == "Failed"


def test_a_rollout_that_no_longer_fits_fails_while_the_count_at_rest_passed() -> None:
    # 3 replicas × 3 = 9 fit in 10 usable; rolling with 2 surge pods needs 15: refused.
    doc = make_doc(
        name="rollfail",
        steps=[3],
        stepTimeoutSeconds=60,
        postgres={"maxConnections": 11},
        rollout={"maxSurge": 2, "measure": True},
        workload={
            "threads": 3,
            "durationSeconds": 3,
            "holdSeconds": 1,
            "onError": "count",
            "statement": "SELECT pg_sleep(0.05)",
            "engine": {"poolSize": 3, "maxOverflow": 0},
        },
    )
    status = runner.run_local(parse_document(doc)).status
    rest, rollout = status.variants[0].steps
    assert rest.outcome == "Passed"
    assert rollout.outcome == "Failed"
    assert rollout.first_error_class == "tooManyClients"
    assert rollout.peak_connections == 10
    verdict = status.verdict
    assert verdict is not None
    assert verdict.max_safe_replicas == 3
    assert status.phase == "Failed"
    assert not verdict.summary.startswith("All steps passed")
    assert verdict.summary.startswith(
        "Every step at rest passed up to 3 replicas, but the rolling update of 3 replicas failed"
    )
    assert "3 replicas are safe at rest but not during a rolling update" in verdict.summary
    assert "During a rolling update (maxSurge 2) at most 1 replica" in verdict.summary  # (1 + 2) × 3 ≤ 10


def test_a_rolling_update_through_pgbouncer_overlaps_by_the_replicas_work_times() -> None:
    # Through one PgBouncer (transaction mode, 5 server connections): 2 replicas × 3 clients, rolled with
    # 1 surge pod: 9 clients at once at the pooler, the server's backends capped at 5. The server sees
    # the pooler's backends, not the replicas', so the replicas' own work times show the overlap.
    doc = make_doc(
        name="rollpool",
        steps=[2],
        stepTimeoutSeconds=60,
        sampling={"intervalMs": 20},
        postgres={"maxConnections": 20},
        rollout={"maxSurge": 1, "measure": True},
        variants=[
            {
                "name": "tx",
                "pooler": {"type": "PgBouncer", "poolMode": "transaction", "defaultPoolSize": 5, "maxClientConn": 20},
            }
        ],
        workload={
            "threads": 3,
            "durationSeconds": 3,
            "holdSeconds": 1,
            "statement": "SELECT pg_sleep(0.05)",
            "engine": {"poolSize": 3, "maxOverflow": 0},
        },
    )
    status = runner.run_local(parse_document(doc)).status
    rest, rollout = status.variants[0].steps
    assert rollout.pooler is not None, rollout
    assert rest.pooler is not None, rest
    assert rest.outcome == "Passed"
    assert rest.pooler.client_peak_connections == 6
    assert rollout.rollout_from == 2, rollout.reason
    assert rollout.outcome == "Passed", rollout.reason
    assert rollout.pooler.predicted_client_peak == rollout.pooler.client_peak_connections == 9
    assert rollout.predicted_peak == 5
    assert rollout.peak_connections <= 5
    overlap = rollout.rollout_overlap
    assert overlap is not None, overlap
    assert overlap.achieved, overlap
    assert overlap.measured_by == "workTimes", overlap
    verdict = status.variants[0].verdict
    assert verdict is not None
    assert "all steps passed up to 2 replicas" in verdict.summary
    assert "2 replicas stay safe during a rolling update" in verdict.summary
