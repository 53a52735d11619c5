"""Step measures in the pure core: histograms that merge exactly, percentiles, throughput, limits,
the queueing explanation, and Kubernetes conditions kept in step with the phase."""

from __future__ import annotations

from typing import Any

import pytest

from poolbench.clock import utc_now
from poolbench.core.benchmark import BenchmarkRun, ReplicaReport, invalid_status, set_conditions, throughput
from poolbench.core.histogram import Histogram
from poolbench.core.results import BenchmarkStatus
from poolbench.core.sampling import Sample
from poolbench.core.spec import parse_spec


def report(
    name: str, ok: int, start: float, end: float, latency_ms: list[float], waits_ms: list[float]
) -> ReplicaReport:
    latency, wait = Histogram(), Histogram()
    for v in latency_ms:
        latency.add(v)
    for v in waits_ms:
        wait.add(v)
    return ReplicaReport(
        name, outcomes={"ok": ok}, latency=latency, checkout_wait=wait, work_started_at=start, work_ended_at=end
    )


def test_throughput_is_over_the_whole_work_phase() -> None:
    reports = [report("a", 100, 1000.0, 1002.0, [], []), report("b", 100, 1000.5, 1004.0, [], [])]
    assert throughput(reports) == 50.0  # 200 statements over 1000.0 → 1004.0
    assert throughput([report("c", 5, 10.0, 10.0, [], [])]) == 0.0
    assert throughput([ReplicaReport("d", outcomes={"ok": 3})]) == 0.0


def run_one_step(spec: dict[str, Any], reports: list[ReplicaReport]) -> BenchmarkRun:
    run = BenchmarkRun(parse_spec(spec), clock=utc_now)
    planned = run.next_step()
    assert planned is not None
    run.begin_step(planned)
    seen(run)
    run.finish_step(reports)
    run.finish()
    return run


def seen(run: BenchmarkRun) -> None:
    """The monitor read the step (a step nobody saw is Inconclusive)."""
    for i in range(5):
        run.add_sample(Sample(t=float(i), total=1, by_state={"active": 1}))


def test_a_step_over_a_limit_fails_naming_the_limit_and_the_value() -> None:
    slow = [report("r0", 40, 0.0, 2.0, [120.0] * 39 + [130.0], [80.0] * 39 + [90.0])]
    spec = {
        "steps": [1],
        "workload": {"threads": 8, "engine": {"poolSize": 2, "maxOverflow": 0}},
        "limits": {"maxLatencyP95Ms": 100, "maxCheckoutWaitP95Ms": 50},
    }
    run = run_one_step(spec, slow)
    step = run.status.variants[0].steps[0]
    assert step.outcome == "Failed"
    # The true p95s are 120 and 80 ms; read from their buckets (116.6, 121.2] and (79.43, 82.54]: within 2 %.
    assert step.latency_ms.p95 == 118.86
    assert step.checkout_wait_ms.p95 == 80.955
    assert "latency p95 118.86 ms exceeds limits.maxLatencyP95Ms 100 ms" in (step.reason or "")
    assert "checkout wait p95 80.955 ms exceeds limits.maxCheckoutWaitP95Ms 50 ms" in (step.reason or "")
    assert run.status.verdict is not None
    assert "failed with latency p95 118.86 ms exceeds limits.maxLatencyP95Ms" in run.status.verdict.summary
    fast = run_one_step({**spec, "limits": {"maxLatencyP95Ms": 300, "maxCheckoutWaitP95Ms": 100}}, slow)
    assert fast.status.variants[0].steps[0].outcome == "Passed"


def test_the_verdict_explains_threads_queueing_for_connections() -> None:
    queued = [report("r0", 40, 0.0, 2.0, [150.0] * 40, [90.0] * 30 + [700.0] * 9 + [800.0])]
    run = run_one_step({"steps": [1], "workload": {"threads": 8, "engine": {"poolSize": 2, "maxOverflow": 0}}}, queued)
    assert run.status.verdict is not None  # the true p95 wait is 700 ms: read as 694.35 (within 2 %)
    assert (
        "Threads queue for connections: each replica runs 8 threads on at most 2 pooled connections,"
        " so 6 wait for a checkout (mean 245 ms, p95 694.35 ms, max 800 ms at 1 replica)."
    ) in (run.status.verdict.summary)
    one = run_one_step({"steps": [1], "workload": {"threads": 3, "engine": {"poolSize": 2, "maxOverflow": 0}}}, queued)
    assert one.status.verdict is not None
    assert "runs 3 threads on at most 2 pooled connections, so 1 waits for a checkout" in one.status.verdict.summary
    plenty = run_one_step({"steps": [1], "workload": {"threads": 2}}, queued)
    assert plenty.status.verdict is not None
    assert "queue" not in plenty.status.verdict.summary


def conditions(status: BenchmarkStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_conditions_follow_the_phase() -> None:
    run = BenchmarkRun(parse_spec({"steps": [1, 2], "workload": {"holdSeconds": 1}}), clock=utc_now)
    run.status.observed_generation = 3
    run.provisioning()
    assert conditions(run.status) == {
        "Ready": ("False", "Provisioning"),
        "Reconciling": ("True", "Provisioning"),
        "Stalled": ("False", "Progressing"),
    }
    planned = run.next_step()
    assert planned is not None
    run.begin_step(planned)
    assert conditions(run.status)["Reconciling"] == ("True", "Running")
    seen(run)
    run.finish_step([ReplicaReport("r", outcomes={"ok": 1})])
    planned = run.next_step()
    assert planned is not None
    run.begin_step(planned)
    seen(run)
    run.finish_step([ReplicaReport("r", outcomes={"ok": 1})])
    run.finish()
    assert conditions(run.status) == {
        "Ready": ("True", "AllStepsPassed"),
        "Reconciling": ("False", "Finished"),
        "Stalled": ("False", "Finished"),
    }
    assert all(c.observed_generation == 3 for c in run.status.conditions)


def test_failed_inconclusive_broken_and_invalid_conditions() -> None:
    failed = run_one_step(
        {"steps": [1]},
        [
            ReplicaReport(
                "r", outcomes={"tooManyClients": 1}, crashed=True, first_error="x", first_error_class="tooManyClients"
            )
        ],
    )
    assert conditions(failed.status) == {  # finished without the answer: Stalled, so kstatus reads Failed
        "Ready": ("False", "StepFailed"),
        "Reconciling": ("False", "Finished"),
        "Stalled": ("True", "StepFailed"),
    }
    broken = BenchmarkRun(parse_spec({"steps": [1]}), clock=utc_now)
    broken.fail("OperationalError: could not connect")
    assert conditions(broken.status)["Stalled"] == ("True", "EnvironmentFailed")
    assert conditions(broken.status)["Reconciling"] == ("False", "Finished")
    invalid = invalid_status("spec.workload: contradiction", 2, utc_now())
    assert conditions(invalid) == {
        "Ready": ("False", "InvalidSpec"),
        "Reconciling": ("False", "Finished"),
        "Stalled": ("True", "InvalidSpec"),
    }
    assert invalid.to_json()["phase"] == "Invalid"


def test_the_status_is_stamped_by_the_clock_passed_in() -> None:
    ticks = iter(f"2026-01-01T00:00:{second:02d}Z" for second in range(60))
    run = BenchmarkRun(parse_spec({"steps": [1], "workload": {"holdSeconds": 1}}), clock=lambda: next(ticks))
    run.provisioning()
    assert {c.last_transition_time for c in run.status.conditions} == {"2026-01-01T00:00:00Z"}
    planned = run.next_step()
    assert planned is not None
    step = run.begin_step(planned)
    seen(run)
    run.finish_step([ReplicaReport("r", outcomes={"ok": 1})])
    run.finish()
    assert (step.started_at, step.finished_at) == ("2026-01-01T00:00:01Z", "2026-01-01T00:00:03Z")
    times = {c.type: c.last_transition_time for c in run.status.conditions}
    assert times == {
        "Ready": "2026-01-01T00:00:04Z",
        "Reconciling": "2026-01-01T00:00:04Z",
        "Stalled": "2026-01-01T00:00:00Z",
    }
    invalid = invalid_status("spec.workload: contradiction", 2, "2026-01-02T00:00:00Z")
    assert invalid.updated_at == "2026-01-02T00:00:00Z"
    assert {c.last_transition_time for c in invalid.conditions} == {"2026-01-02T00:00:00Z"}


def test_a_transition_time_changes_only_with_the_status() -> None:
    status = BenchmarkStatus(phase="Running")
    set_conditions(status, now="2026-01-01T00:00:00Z")
    status.message = "step 2/2"
    set_conditions(status, now="2026-01-01T00:01:00Z")
    assert {c.last_transition_time for c in status.conditions} == {"2026-01-01T00:00:00Z"}
    status.phase = "Completed"
    set_conditions(status, now="2026-01-01T00:02:00Z")
    times = {c.type: c.last_transition_time for c in status.conditions}
    assert times["Ready"] == times["Reconciling"] == "2026-01-01T00:02:00Z"
    assert times["Stalled"] == "2026-01-01T00:00:00Z"  # False before and after


@pytest.mark.parametrize(
    "prefix",
    [
        'connection to server at "127.0.0.1", port 5432 failed: ',
        'connection to server at "small-postgres" (10.0.0.73), port 5432 failed: ',  # a Service name (the node tier)
        'connection to server at "db.example" (2001:db8::1), port 6432 failed: ',
        'connection to server on socket "/tmp/.s.PGSQL.5432" failed: ',
    ],
)
def test_the_verdict_quotes_the_servers_words_without_libpqs_prefix(prefix: str) -> None:
    from poolbench.core.results import StepResult
    from poolbench.core.verdict import failure_cause

    step = StepResult(
        replicas=8,
        outcome="Failed",
        first_error_class="tooManyClients",
        first_error=f"replica-3: {prefix}FATAL:  sorry, too many clients already",
    )
    assert failure_cause(step) == "tooManyClients (FATAL:  sorry, too many clients already)"
