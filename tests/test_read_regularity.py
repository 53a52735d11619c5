"""How regular a step's reads were: the p99 time between reads, and the note when they fell behind (pure)."""

from poolbench.clock import utc_now
from poolbench.core.benchmark import BenchmarkRun, ReplicaReport
from poolbench.core.contracts.summary import ReplicaSummary
from poolbench.core.results import StepResult
from poolbench.core.sampling import (
    Sample,
    StepAccumulator,
    advised_interval_ms,
    fell_behind,
    interval_p99_ms,
    sample_from_rows,
)
from poolbench.core.spec import parse_spec
from poolbench.core.verdict import judge_step


def spaced(spacings_ms: list[float]) -> list[float]:
    """Read start times (seconds) with these spacings between them, from 0."""
    times, t = [0.0], 0.0
    for ms in spacings_ms:
        t += ms / 1000
        times.append(t)
    return times


def test_p99_is_the_nearest_rank_of_the_spacings() -> None:
    # 100 spacings: the p99 is the 99th smallest. One slow read stays above it, two reach it.
    assert interval_p99_ms(spaced([100.0] * 99 + [430.0])) == 100.0
    assert interval_p99_ms(spaced([100.0] * 98 + [430.0, 250.0])) == 250.0
    assert interval_p99_ms(spaced([100.0] * 98 + [430.0, 430.0])) == 430.0
    # 10 spacings: rank ceil(9.9) = 10 would be the largest: one stall alone is left out, two are not.
    assert interval_p99_ms(spaced([100.0] * 9 + [370.0])) == 100.0
    assert interval_p99_ms(spaced([100.0] * 8 + [370.0, 300.0])) == 300.0
    assert interval_p99_ms(spaced([370.0])) == 370.0


def test_p99_orders_the_reads_and_needs_two() -> None:
    assert interval_p99_ms([0.3, 0.0, 0.1, 0.2]) == 100.0
    assert interval_p99_ms([]) is None
    assert interval_p99_ms([1.0]) is None


def test_failed_reads_count_as_reads() -> None:
    acc = StepAccumulator(replicas=1)
    acc.add(sample_from_rows(0.0, [("idle", "a", 1, 0.1)]))
    acc.add(Sample.gap(0.1, "boom"))
    acc.add(sample_from_rows(0.2, [("idle", "a", 1, 0.2)]))
    assert acc.interval_p99_ms() == 100.0  # not 200: the failed read was started on time
    assert acc.fill(StepResult(replicas=1)).sample_gaps == 1


def test_behind_is_above_one_and_a_half_intervals() -> None:
    assert not fell_behind(150.0, 100)
    assert fell_behind(150.1, 100)
    assert not fell_behind(None, 100)


def test_advised_interval_is_the_read_time_rounded_up_to_50_ms() -> None:
    assert advised_interval_ms(430.0) == 450
    assert advised_interval_ms(450.0) == 450
    assert advised_interval_ms(450.1) == 500
    assert advised_interval_ms(3.0) == 50
    assert advised_interval_ms(10_000_000.0) == 60_000


def passed(p99_ms: float | None, source: str = "serverLog") -> StepResult:
    return StepResult.model_validate(
        {
            "replicas": 2,
            "predictedPeak": 4,
            "usableConnections": 99,
            "peakConnections": 4,
            "sampledPeakConnections": 4,
            "peakSource": source,
            "samples": 100,
            "sampleIntervalP99Ms": p99_ms,
        }
    )


def test_reads_behind_is_a_note_not_a_failure() -> None:
    step = judge_step(passed(430.0), expected_replicas=2, interval_ms=100)
    assert step.outcome == "Passed"
    assert step.reason is not None
    assert "fell behind: 430 ms between reads at p99, more than 1.5 × the 100 ms interval" in step.reason
    assert "raise spec.sampling.intervalMs to 450" in step.reason
    assert "the exact peak from the server's log does not depend on it" in step.reason


def test_sampled_peak_says_what_it_misses() -> None:
    step = judge_step(passed(430.0, "sampled"), expected_replicas=2, interval_ms=100)
    assert step.outcome == "Passed"
    assert step.reason is not None
    assert "the sampled peak misses what comes and goes between reads" in step.reason


def test_no_note_on_schedule_or_without_reads() -> None:
    for p99 in (150.0, None):
        step = judge_step(passed(p99), expected_replicas=2, interval_ms=100)
        assert step.reason is not None
        assert "fell behind" not in step.reason


def test_a_failed_step_keeps_its_cause_first() -> None:
    step = passed(600.0)
    step.errors.too_many_clients = 3
    judge_step(step, expected_replicas=2, interval_ms=200)
    assert step.outcome == "Failed"
    assert step.reason is not None
    assert step.reason.startswith("3 failed attempts")
    assert step.reason.endswith(
        "raise spec.sampling.intervalMs to 600; the exact peak from the server's log does not depend on it)"
    )


def test_the_run_records_regularity_against_the_specs_interval() -> None:
    run = BenchmarkRun(parse_spec({"steps": [1], "sampling": {"intervalMs": 200}}), clock=utc_now)
    planned = run.next_step()
    assert planned is not None
    run.begin_step(planned)
    for t in spaced([200.0] * 8 + [900.0, 900.0]):
        run.add_sample(sample_from_rows(t, [("active", "x", planned.predicted_peak, None)]))
    step = run.finish_step([ReplicaReport.from_summary("x", ReplicaSummary.from_json({"outcomes": {"ok": 1}}))])
    assert step.sample_interval_p99_ms == 900.0
    assert step.outcome == "Passed"
    assert step.reason is not None
    assert "900 ms between reads at p99, more than 1.5 × the 200 ms interval" in step.reason
    assert "raise spec.sampling.intervalMs to 900" in step.reason
    assert run.finish().model_dump(by_alias=True)["variants"][0]["steps"][0]["sampleIntervalP99Ms"] == 900.0
