"""Pool arithmetic and verdicts (pure)."""

from typing import Any, cast

from poolbench.clock import utc_now
from poolbench.core.benchmark import BenchmarkRun, PlannedStep, ReplicaReport, plan_steps
from poolbench.core.budget import predict
from poolbench.core.contracts.summary import ReplicaSummary
from poolbench.core.results import StepResult
from poolbench.core.sampling import Sample, StepAccumulator, sample_from_rows
from poolbench.core.spec import PoolBenchmarkSpec, parse_spec
from poolbench.core.verdict import overall_verdict


def spec(**workload: Any) -> PoolBenchmarkSpec:
    extra = workload.pop("postgres", {})
    return parse_spec({"steps": [5, 10], "workload": workload, "postgres": extra})


def test_seed_arithmetic() -> None:
    s = spec(threads=15)
    five, ten = predict(s, 5), predict(s, 10)
    assert (five.peak, five.idle, five.usable, five.fits) == (75, 25, 99, True)
    assert (ten.peak, ten.fits) == (150, False)


def test_pool_variants() -> None:
    assert predict(spec(threads=15, engine={"poolSize": 2, "maxOverflow": 0}), 3).peak == 6
    assert predict(spec(threads=15, engine={"poolSize": 2, "maxOverflow": 0}), 3).idle == 6
    assert predict(spec(threads=4), 2).peak == 8  # threads below pool capacity
    assert predict(spec(threads=4), 2).idle == 8
    null = predict(spec(threads=7, engine={"poolClass": "NullPool"}), 2)
    assert (null.peak, null.idle) == (14, 0)
    assert predict(spec(threads=1, processes=2, engine={"poolClass": "StaticPool"}), 3).peak == 6
    assert predict(spec(threads=30, engine={"maxOverflow": -1}), 1).peak == 30
    assert predict(spec(threads=30, engine={"poolSize": 0}), 1).idle == 30


def test_app_role_loses_reserved_slots() -> None:
    assert predict(spec(role="app"), 1).usable == 100 - 3 - 1
    assert predict(spec(role="superuser"), 1).usable == 99


def test_plan_follows_steps() -> None:
    plan = plan_steps(spec(threads=15))
    assert [(p.index, p.replicas, p.predicted_peak) for p in plan] == [(1, 5, 75), (2, 10, 150)]


def test_accumulator_holds_peaks_and_counts_gaps() -> None:
    acc = StepAccumulator(replicas=2)
    acc.add(sample_from_rows(0.1, [("active", "a", 3, None), ("idle", "b", 1, 0.5)]))
    acc.add(Sample.gap(0.2, "boom"))
    acc.add(sample_from_rows(0.3, [("idle", "a", 2, 1.5), ("idle in transaction", "b", 1, None)]))
    acc.mark_work_done()
    acc.add(sample_from_rows(0.4, [("idle", "a", 2, 2.0)]))
    step = acc.fill(StepResult(replicas=2))
    assert step.peak_connections == 4
    assert (step.peak_by_state.active, step.peak_by_state.idle, step.peak_by_state.idle_in_transaction) == (3, 2, 1)
    assert step.peak_by_replica == {"a": 3, "b": 1}
    assert step.idle_at_end == 2
    assert step.oldest_idle_seconds == 2.0
    assert (step.samples, step.sample_gaps) == (3, 1)


def run_steps(s: PoolBenchmarkSpec, outcomes: list[dict[str, Any]]) -> BenchmarkRun:
    run = BenchmarkRun(s, clock=utc_now)
    for summary in outcomes:
        planned = run.next_step()
        assert planned is not None
        run.begin_step(planned)
        run.add_sample(sample_from_rows(0.0, [("active", "x", planned.predicted_peak, None)]))
        run.finish_step([ReplicaReport.from_summary("x", ReplicaSummary.from_json(summary))])
    return run


def test_verdict_first_failure_and_max_safe() -> None:
    s = spec(threads=15)
    run = run_steps(s, [{"outcomes": {"ok": 10}}, {"outcomes": {"ok": 5, "tooManyClients": 3}, "phase": "crashed"}])
    assert run.next_step() is None
    status = run.finish()
    assert status.phase == "Failed"
    assert [st.outcome for st in status.variants[0].steps] == ["Passed", "Failed"]
    assert status.variants[0].steps[1].errors.too_many_clients == 3
    assert status.variants[0].steps[1].crashed_replicas == 1
    assert status.verdict is not None
    assert status.verdict.max_safe_replicas == 5
    assert status.verdict.first_failing_replicas == 10
    assert "150" in status.verdict.reason
    assert status.failures == 3


def test_stop_on_failure_skips_remaining_steps() -> None:
    s = parse_spec({"steps": [1, 2, 3]})
    run = run_steps(s, [{"outcomes": {"other": 1}}])
    assert run.next_step() is None
    s = parse_spec({"steps": [1, 2, 3], "stopOnFailure": False})
    run = run_steps(s, [{"outcomes": {"other": 1}}])
    planned = run.next_step()
    assert planned is not None
    assert planned.replicas == 2


def test_all_passed_is_completed() -> None:
    s = parse_spec({"steps": [1, 2]})
    status = run_steps(s, [{"outcomes": {"ok": 1}}, {"outcomes": {"ok": 1}}]).finish()
    assert status.phase == "Completed"
    assert status.verdict is not None
    assert status.verdict.max_safe_replicas == 2
    assert status.verdict.first_failing_replicas is None


def test_resume_replaces_an_unfinished_step_never_duplicates() -> None:
    s = parse_spec({"steps": [1, 2]})
    run = run_steps(s, [{"outcomes": {"ok": 1}}])
    run.begin_step(cast(PlannedStep, run.next_step()))  # interrupted here
    resumed = BenchmarkRun(s, run.status.model_copy(deep=True), clock=utc_now)
    planned = resumed.next_step()
    assert planned is not None
    assert planned.index == 2
    resumed.begin_step(planned)
    assert [st.replicas for st in resumed.status.variants[0].steps] == [1, 2]


def test_verdict_with_no_steps() -> None:
    assert overall_verdict(parse_spec({"steps": [1]}), []).max_safe_replicas is None


def test_a_database_restart_fails_the_step_and_says_so() -> None:
    s = parse_spec({"steps": [1]})
    run = BenchmarkRun(s, clock=utc_now)
    planned = run.next_step()
    assert planned is not None
    run.begin_step(planned)
    run.add_sample(sample_from_rows(0.0, [("active", "x", 1, None)]))
    run.add_sample(Sample.gap(0.1, "server closed the connection unexpectedly"))
    from dataclasses import replace

    run.add_sample(replace(sample_from_rows(0.2, []), server_restarted=True))
    step = run.finish_step([ReplicaReport.from_summary("x", ReplicaSummary.from_json({"outcomes": {"ok": 3}}))])
    assert step.outcome == "Failed"
    assert step.database_restarts == 1
    assert step.sample_gaps == 1
    assert step.reason is not None
    assert step.reason.startswith("the database restarted")
