"""What users feel, per step, against a real PostgreSQL: throughput, latency, checkout wait, wait
events and connection ages, with cases the pool arithmetic answers.

A sleeping statement makes the answers known: with 8 threads behind 2 pooled connections every
thread but two waits at least one statement for its checkout; with a connection per thread nobody
waits; a statement never takes less than its sleep; and threads / sleep is the throughput.
"""

from __future__ import annotations

from typing import Any

import pytest

from poolbench.core.benchmark import ReplicaReport
from poolbench.core.histogram import RELATIVE_ERROR, merged
from poolbench.core.results import BenchmarkStatus
from poolbench.core.spec import parse_document
from poolbench.local import runner
from tests.conftest import make_doc

pytestmark = pytest.mark.postgres

SLEEP_S = 0.1


def run(
    name: str, replicas: int, threads: int, pool: int, limits: dict[str, float] | None = None, iterations: int = 5
) -> BenchmarkStatus:
    doc = make_doc(
        name=name,
        steps=[replicas],
        stepTimeoutSeconds=60,
        sampling={"intervalMs": 20},
        postgres={"maxConnections": 60},
        limits=limits or {},
        workload={
            "threads": threads,
            "iterations": iterations,
            "holdSeconds": 1,
            "statement": f"SELECT pg_sleep({SLEEP_S})",
            "engine": {"poolSize": pool, "maxOverflow": 0},
        },
    )
    return runner.run_local(parse_document(doc)).status


@pytest.mark.serial
def test_threads_queue_behind_a_small_pool_and_a_wait_limit_fails_the_step() -> None:
    status = run("queued", replicas=2, threads=8, pool=2, limits={"maxCheckoutWaitP95Ms": 50})
    step = status.variants[0].steps[0]
    # 8 threads share 2 connections: at least 6 × 5 statements' worth of waiting per replica, spread
    # over 40 checkouts. QueuePool is not fair (the thread that returns a connection often takes it
    # straight back), so most checkouts wait nothing and a few wait long: the mean and the tail show
    # the queue, the median does not.
    assert step.checkout_wait_ms.mean >= SLEEP_S * 1000
    assert step.checkout_wait_ms.p95 >= 3 * SLEEP_S * 1000
    assert step.latency_ms.p50 >= SLEEP_S * 1000
    assert step.queries == 2 * 8 * 5
    assert step.errors.total() == 0
    assert step.outcome == "Failed"
    assert "exceeds limits.maxCheckoutWaitP95Ms 50 ms" in (step.reason or "")
    assert status.verdict is not None
    assert "Threads queue for connections" in status.verdict.summary
    # 2 replicas × 2 connections, each running pg_sleep (wait_event_type Timeout) at the peak.
    assert step.peak_connections == 4
    assert step.peak_by_wait_event_type.get("Timeout") == 4


@pytest.mark.serial
def test_a_connection_per_thread_waits_for_nothing_and_runs_at_threads_per_sleep() -> None:
    status = run("direct", replicas=2, threads=4, pool=4, limits={"maxCheckoutWaitP95Ms": 50}, iterations=10)
    step = status.variants[0].steps[0]
    assert step.outcome == "Passed", step.reason
    assert step.checkout_wait_ms.p50 <= 2.5  # only the first checkout of each thread connects
    assert step.latency_ms.p50 >= SLEEP_S * 1000
    expected = 2 * 4 / SLEEP_S  # replicas × threads / statement time
    assert abs(step.throughput - expected) <= 0.2 * expected, step.throughput
    # The backends were opened at the start of the work (about 1 s before it ended), not before.
    ages = step.connection_age_seconds
    assert ages.max is not None
    assert ages.p50 is not None
    assert 0.5 <= ages.max <= 5
    assert ages.p50 > 0.5
    assert status.verdict is not None
    assert "queue" not in status.verdict.summary


def test_the_steps_histograms_are_exactly_the_sum_of_the_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ReplicaReport] = []
    collect = runner.LocalRunner.collect

    def keep(self: Any) -> list[ReplicaReport]:
        reports = collect(self)
        seen.extend(reports)
        return reports

    monkeypatch.setattr(runner.LocalRunner, "collect", keep)
    status = run("merge", replicas=3, threads=3, pool=2)
    step = status.variants[0].steps[0]
    assert len(seen) == 3
    assert all(r.latency.total == 15 for r in seen)
    latency, waits = merged(r.latency for r in seen), merged(r.checkout_wait for r in seen)
    assert step.latency_histogram.to_json() == latency.to_json()
    assert latency.total == 45
    assert step.checkout_wait_histogram.to_json() == waits.to_json()
    assert step.latency_ms.max == round(max(r.latency.max_ms for r in seen), 3)


#: One thread on one connection, so one session and one temporary sequence: the 60th statement sleeps
#: 400 ms, every other one 200 ms. Of 60 statements the 57th smallest (the p95) is a 200 ms one, even
#: when two of them take 50 ms longer than their sleep (a loaded machine).
LAST_OF_60_SLOW = (
    "DO $$BEGIN CREATE TEMP SEQUENCE IF NOT EXISTS sixty;"
    " PERFORM pg_sleep(CASE WHEN nextval('sixty') % 60 = 0 THEN 0.4 ELSE 0.2 END); END$$"
)


def limit_run(name: str, limit_ms: float, iterations: int) -> BenchmarkStatus:
    doc = make_doc(
        name=name,
        steps=[1],
        stepTimeoutSeconds=60,
        postgres={"maxConnections": 20},
        limits={"maxLatencyP95Ms": limit_ms},
        workload={
            "threads": 1,
            "iterations": iterations,
            "holdSeconds": 0.2,
            "statement": LAST_OF_60_SLOW,
            "engine": {"poolSize": 1, "maxOverflow": 0},
        },
    )
    return runner.run_local(parse_document(doc)).status


@pytest.mark.serial
def test_a_latency_limit_is_judged_on_the_true_p95() -> None:
    """The true p95 is a 200 ms statement (its sleep and the round trip); the limit, 250 ms, lies
    inside the ten-per-decade bucket (200, 251]: read as that bucket's upper bound, the p95 would be
    251 ms (the slowest is 400) and fail. With the limit as an edge the step passes and every figure
    agrees; a 200 ms limit, below every statement, fails."""
    step = limit_run("limit-pass", 250, 60).variants[0].steps[0]
    assert step.queries == 60
    assert step.errors.total() == 0
    assert step.outcome == "Passed", step.reason
    assert 200 * (1 - RELATIVE_ERROR) <= step.latency_ms.p95 <= 250
    assert step.latency_ms.max >= 400  # the slow one
    h = step.latency_histogram.histogram()
    assert 250.0 in h.extra_edges()
    assert sum(h.counts[: h.edges.index(250.0) + 1]) >= 57
    failed = limit_run("limit-fail", 200, 10).variants[0].steps[0]
    assert failed.outcome == "Failed"
    assert failed.latency_ms.p95 > 200
    assert f"latency p95 {failed.latency_ms.p95:g} ms exceeds limits.maxLatencyP95Ms 200 ms" in (failed.reason or "")
