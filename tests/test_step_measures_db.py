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
from poolbench.core.histogram import merged
from poolbench.core.results import BenchmarkStatus
from poolbench.core.spec import parse_document
from poolbench.local import runner
from tests.conftest import make_doc

pytestmark = pytest.mark.postgres

SLEEP_S = 0.1


def run(name: str, replicas: int, threads: int, pool: int, limits: dict[str, float] | None = None,
        iterations: int = 5) -> BenchmarkStatus:
    doc = make_doc(name=name, steps=[replicas], stepTimeoutSeconds=60, sampling={"intervalMs": 20},
                   postgres={"maxConnections": 60}, limits=limits or {},
                   workload={"threads": threads, "iterations": iterations, "holdSeconds": 1,
                             "statement": f"SELECT pg_sleep({SLEEP_S})",
                             "engine": {"poolSize": pool, "maxOverflow": 0}})
    return runner.run_local(parse_document(doc)).status


def test_threads_queue_behind_a_small_pool_and_a_wait_limit_fails_the_step() -> None:
    status = run("queued", replicas=2, threads=8, pool=2, limits={"maxCheckoutWaitP95Ms": 50})
    step = status.steps[0]
    # 8 threads share 2 connections: at least 6 × 5 statements' worth of waiting per replica, spread
    # over 40 checkouts. QueuePool is not fair (the thread that returns a connection often takes it
    # straight back), so most checkouts wait nothing and a few wait long: the mean and the tail show
    # the queue, the median does not.
    assert step.checkout_wait_ms.mean >= SLEEP_S * 1000
    assert step.checkout_wait_ms.p95 >= 3 * SLEEP_S * 1000
    assert step.latency_ms.p50 >= SLEEP_S * 1000
    assert step.queries == 2 * 8 * 5 and step.errors.total() == 0
    assert step.outcome == "Failed"
    assert "exceeds limits.maxCheckoutWaitP95Ms 50 ms" in (step.reason or "")
    assert status.verdict is not None and "Threads queue for connections" in status.verdict.summary
    # 2 replicas × 2 connections, each running pg_sleep (wait_event_type Timeout) at the peak.
    assert step.peak_connections == 4
    assert step.peak_by_wait_event_type.get("Timeout") == 4


def test_a_connection_per_thread_waits_for_nothing_and_runs_at_threads_per_sleep() -> None:
    status = run("direct", replicas=2, threads=4, pool=4, limits={"maxCheckoutWaitP95Ms": 50}, iterations=10)
    step = status.steps[0]
    assert step.outcome == "Passed", step.reason
    assert step.checkout_wait_ms.p50 <= 2.5  # only the first checkout of each thread connects
    assert step.latency_ms.p50 >= SLEEP_S * 1000
    expected = 2 * 4 / SLEEP_S  # replicas × threads / statement time
    assert abs(step.throughput - expected) <= 0.2 * expected, step.throughput
    # The backends were opened at the start of the work (about 1 s before it ended), not before.
    ages = step.connection_age_seconds
    assert ages.max is not None and ages.p50 is not None
    assert 0.5 <= ages.max <= 5 and ages.p50 > 0.5
    assert status.verdict is not None and "queue" not in status.verdict.summary


def test_the_steps_histograms_are_exactly_the_sum_of_the_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ReplicaReport] = []
    collect = runner.LocalRunner.collect

    def keep(self: Any) -> list[ReplicaReport]:
        reports = collect(self)
        seen.extend(reports)
        return reports

    monkeypatch.setattr(runner.LocalRunner, "collect", keep)
    status = run("merge", replicas=3, threads=3, pool=2)
    step = status.steps[0]
    assert len(seen) == 3 and all(r.latency.total == 15 for r in seen)
    latency, waits = merged(r.latency for r in seen), merged(r.checkout_wait for r in seen)
    assert step.latency_histogram.counts == latency.counts and sum(latency.counts) == 45
    assert step.checkout_wait_histogram.counts == waits.counts
    assert step.latency_ms.max == round(max(r.latency.max_ms for r in seen), 3)
