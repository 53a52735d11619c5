"""Latency histograms: percentiles within a stated error of the true nearest-rank value, limits judged
exactly from counts, and merges across replicas (summaries, Prometheus buckets) that lose nothing."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poolbench.core.contracts.replica_env import HISTOGRAM_EDGES_ENV, WorkloadConfig
from poolbench.core.histogram import (
    GRID_MS,
    RELATIVE_ERROR,
    Histogram,
    edges_with,
    format_buckets,
    merged,
    ms_of_label,
    parse_buckets,
    seconds_label,
)
from poolbench.core.results import HistogramCounts, Percentiles, StepResult
from poolbench.core.spec import LimitsSpec, parse_spec
from poolbench.core.verdict import limit_breaches
from poolbench.core.workload_env import workload_env


def true_percentile(values: list[float], q: float) -> float:
    """The nearest-rank q-quantile: the ceil(q·n)-th smallest value."""
    return sorted(values)[max(1, math.ceil(round(q * len(values), 9))) - 1]


def filled(values: list[float], edges: tuple[float, ...] = GRID_MS) -> Histogram:
    h = Histogram(edges)
    for v in values:
        h.add(v)
    return h


def test_the_grid_is_sixty_edges_per_decade_within_two_percent() -> None:
    assert GRID_MS[:4] == (0.001, 0.001039, 0.00108, 0.001122)
    assert GRID_MS[-1] == 1e9
    assert len(GRID_MS) == 721
    assert {0.001, 1.0, 10.0, 100.0, 1000.0, 1e6} <= set(GRID_MS)
    assert all(1.038 < b / a < 1.04 for a, b in zip(GRID_MS, GRID_MS[1:], strict=False))
    assert 0.0195 < RELATIVE_ERROR < 0.02


def test_buckets_are_inclusive_upper_bounds() -> None:
    h = filled([1.0, 1.0000001, 0.0, 2e9])
    i = GRID_MS.index(1.0)
    assert h.counts[i] == 1
    assert h.counts[i + 1] == 1
    assert h.counts[0] == 1
    assert h.counts[-1] == 1
    assert filled([0.0] * 3).percentile(0.5) == 0.0
    assert filled([0.0004]).percentile(0.5) == 0.0004
    assert Histogram().summary() == {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}


def test_a_true_p95_just_under_a_limit_inside_a_coarse_bucket_passes() -> None:
    """Limit 60 ms lies inside the ten-per-decade bucket (50.1, 63.1]: read as that bucket's upper
    bound, a true p95 of 59 ms would be 63.1 ms and fail the limit. Counted with the limit as an
    edge, 95 of 100 values are at most 60 ms: the limit holds, and the reading says so."""
    edges = edges_with([60.0])
    under = filled([20.0] * 90 + [59.0] * 5 + [75.0] * 5, edges)
    assert true_percentile([20.0] * 90 + [59.0] * 5 + [75.0] * 5, 0.95) == 59.0
    assert not under.exceeds(0.95, 60.0)
    assert 59.0 * (1 - RELATIVE_ERROR) <= under.percentile(0.95) <= 60.0
    # One value more above the limit: the 95th smallest is now 75 ms; the limit fails, the reading agrees.
    over = filled([20.0] * 90 + [59.0] * 4 + [75.0] * 6, edges)
    assert over.exceeds(0.95, 60.0)
    assert over.percentile(0.95) > 60.0
    # Just above and exactly at the limit: at the limit does not exceed it, a hair above does.
    assert filled([60.0] * 100, edges).exceeds(0.95, 60.0) is False
    above = filled([60.001] * 100, edges)
    assert above.exceeds(0.95, 60.0)
    assert above.percentile(0.95) > 60.0


def step_with(latencies: list[float], waits: list[float], limits: LimitsSpec) -> StepResult:
    edges = edges_with([v for v in (limits.max_latency_p95_ms, limits.max_checkout_wait_p95_ms) if v])
    latency, wait = filled(latencies, edges), filled(waits, edges)
    return StepResult(
        replicas=1,
        latency_histogram=HistogramCounts.model_validate(latency.to_json()),
        checkout_wait_histogram=HistogramCounts.model_validate(wait.to_json()),
        latency_ms=Percentiles(**latency.summary()),
        checkout_wait_ms=Percentiles(**wait.summary()),
    )


def test_limit_breaches_judge_the_counts_and_quote_a_reading_on_the_same_side() -> None:
    limits = LimitsSpec(max_latency_p95_ms=60, max_checkout_wait_p95_ms=0.5)
    assert limit_breaches(step_with([59.5] * 100, [0.49] * 100, limits), limits) == []
    step = step_with([60.2] * 100, [0.51] * 100, limits)
    assert [b.split(" exceeds ")[1] for b in limit_breaches(step, limits)] == [
        "limits.maxLatencyP95Ms 60 ms",
        "limits.maxCheckoutWaitP95Ms 0.5 ms",
    ]
    assert step.latency_ms.p95 > 60
    assert step.checkout_wait_ms.p95 > 0.5
    assert f"latency p95 {step.latency_ms.p95:g} ms exceeds" in limit_breaches(step, limits)[0]


def test_the_limits_reach_every_replica_through_its_environment() -> None:
    spec = parse_spec({"steps": [1], "limits": {"maxLatencyP95Ms": 60, "maxCheckoutWaitP95Ms": 12.5}})
    env = workload_env(spec)
    assert env[HISTOGRAM_EDGES_ENV] == "12.5,60.0"
    assert WorkloadConfig.from_env(env).histogram_edges_ms == (12.5, 60.0)
    assert HISTOGRAM_EDGES_ENV not in workload_env(parse_spec({"steps": [1]}))
    assert {60.0, 12.5} <= set(edges_with(WorkloadConfig.from_env(env).histogram_edges_ms))


def test_replicas_merge_exactly_through_summaries_and_prometheus_buckets() -> None:
    rng = random.Random(11)
    edges = edges_with([60.0, 250.0])
    parts = [filled([rng.lognormvariate(3, 1.5) for _ in range(rng.randint(0, 400))], edges) for _ in range(5)]
    total = merged(parts)
    assert total.edges == edges
    assert total.counts == [sum(p.counts[i] for p in parts) for i in range(len(edges))]
    assert total.max_ms == max(p.max_ms for p in parts)
    # Through the summary's JSON and through Prometheus' cumulative buckets: the same counts on the same edges.
    again = Histogram.from_json(json.loads(json.dumps(total.to_json())))
    assert (again.edges, again.counts) == (total.edges, total.counts)
    scraped = Histogram.from_cumulative(total.cumulative(), total.sum_ms, total.max_ms)
    assert (scraped.edges, scraped.counts) == (total.edges, total.counts)
    # A replica without values (or without a summary) merges in without changing a count.
    assert merged([Histogram(), *parts]).counts == total.counts
    assert merged([Histogram(), Histogram(edges)]).to_json()["buckets"] == "60:0 250:0"


def test_prometheus_labels_are_decimal_seconds_that_read_back_to_the_same_edge() -> None:
    assert [seconds_label(e) for e in (0.001, 60.0, 12.5, 1e9)] == ["0.000001", "0.06", "0.0125", "1000000"]
    assert all(ms_of_label(seconds_label(e)) == e for e in (*GRID_MS, 60.0, 12.345678, 0.7))
    assert ms_of_label("+Inf") == float("inf")


def test_buckets_are_one_line_of_bound_count_pairs_that_read_back_exactly() -> None:
    pairs = [(0.001, 1), (0.5179, 3), (1.1, 10), (250.0, 0), (10.5, 7), (1e9, 2)]
    line = format_buckets(sorted(pairs))
    assert line == "0.001:1 0.5179:3 1.1:10 10.5:7 250:0 1000000000:2"
    assert parse_buckets(line) == sorted(pairs)
    assert parse_buckets("") == []
    assert format_buckets([]) == ""
    for bad in ("1", "1:x", "x:1", "1:2:3"):
        with pytest.raises(ValueError, match="bucket|invalid|could not convert"):
            parse_buckets(bad)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(min_value=0.0005, max_value=2e9, allow_nan=False), max_size=300),
    limits=st.lists(st.floats(min_value=0.01, max_value=1e6, allow_nan=False), max_size=3),
)
def test_a_histogram_written_as_a_status_field_reads_back_with_every_count(
    values: list[float], limits: list[float]
) -> None:
    h = Histogram(edges_with(limits))
    for v in values:
        h.add(v)
    status = HistogramCounts.of(h)
    again = HistogramCounts.model_validate(json.loads(json.dumps(status.to_json()))).histogram()
    assert again.edges == h.edges
    assert again.counts == h.counts
    assert again.total == len(values)
    assert all(":0" not in token or float(token.split(":")[0]) not in GRID_MS for token in status.buckets.split())


def test_malformed_histograms_count_as_empty() -> None:
    for bad in (
        None,
        {},
        {"buckets": ["1:2"]},
        {"buckets": "1:x"},
        {"buckets": "a"},
        {"buckets": "1"},
        {"buckets": "2:1 1:1"},
        {"buckets": "-1:1"},
        {"buckets": "1:-3"},
        {"buckets": "nan:1"},
    ):
        assert Histogram.from_json(bad).total == 0
    assert Histogram.from_cumulative([("x", 1.0)], 0.0, 0.0).total == 0
    assert Histogram.from_cumulative([("0.001", 5.0), ("+Inf", 3.0)], 0.0, 0.0).total == 0


def test_coarsened_keeps_totals_and_limit_counts() -> None:
    rng = random.Random(3)
    edges = edges_with([60.0])
    h = filled([rng.uniform(0.01, 5000) for _ in range(3000)], edges)
    coarse = Histogram.from_json(h.coarsened().to_json())
    assert coarse.total == h.total
    assert 60.0 in coarse.edges
    i, j = h.edges.index(60.0), coarse.edges.index(60.0)
    assert sum(coarse.counts[: j + 1]) == sum(h.counts[: i + 1])
    assert len(json.dumps(coarse.to_json())) < len(json.dumps(h.to_json())) / 3


values_ms = st.lists(st.floats(min_value=0.001, max_value=1e8, allow_nan=False), min_size=1, max_size=300)
quantiles = st.sampled_from([0.5, 0.9, 0.95, 0.99, 1.0])


@settings(max_examples=300, deadline=None)
@given(values_ms, quantiles)
def test_a_percentile_is_within_the_stated_error_of_the_truth(values: list[float], q: float) -> None:
    h = filled(values)
    true = true_percentile(values, q)
    assert abs(h.percentile(q) - true) <= RELATIVE_ERROR * true


@settings(max_examples=300, deadline=None)
@given(values_ms, quantiles, st.floats(min_value=0.001, max_value=1e8, allow_nan=False), st.integers(1, 5))
def test_a_limit_is_judged_exactly_and_merges_across_replicas(
    values: list[float], q: float, limit: float, replicas: int
) -> None:
    edges = edges_with([limit])
    parts = [filled(values[i::replicas], edges) for i in range(replicas)]
    scraped = [Histogram.from_cumulative(p.cumulative(), p.sum_ms, p.max_ms) for p in parts]
    whole = merged(Histogram.from_json(json.loads(json.dumps(p.to_json()))) for p in scraped)
    assert whole.counts == filled(values, edges).counts
    true = true_percentile(values, q)
    assert whole.exceeds(q, limit) == (true > limit)
    assert (whole.percentile(q) > limit) == (true > limit)  # the reading never contradicts the verdict
    assert abs(whole.percentile(q) - true) <= RELATIVE_ERROR * true


def test_a_termination_message_keeps_its_histograms_coarser_when_they_do_not_fit() -> None:
    """Kubernetes keeps 4096 bytes of a crashed container's summary: a histogram with hundreds of
    non-empty buckets is kept on ten edges per decade, its total and its limit counts exact."""
    from poolbench.core.contracts.summary import SUMMARY_LIMIT, ReplicaSummary

    edges = edges_with([60.0])
    spread = filled([0.001 * 1.039 ** (i / 2) for i in range(1000)], edges)
    summary = ReplicaSummary(replica="r0", phase="crashed", first_error="x", latency=spread, checkout_wait=spread)
    assert len(json.dumps(summary.to_json())) > SUMMARY_LIMIT
    kept = json.loads(summary.to_text())
    assert len(json.dumps(kept, separators=(",", ":"))) <= SUMMARY_LIMIT
    assert kept["firstError"] == "x"
    for key in ("latencyMs", "checkoutWaitMs"):
        h = Histogram.from_json(kept[key])
        assert h.total == 1000
        assert h.exceeds(0.5, 60.0) == spread.exceeds(0.5, 60.0)
        assert sum(h.counts[: h.edges.index(60.0) + 1]) == sum(spread.counts[: edges.index(60.0) + 1])


def test_a_step_of_several_replicas_is_judged_on_their_merged_counts() -> None:
    """Three replicas: 95 of 100 statements at most 60 ms in all, but no replica alone says so."""
    from poolbench.core.benchmark import ReplicaReport
    from tests.test_measures_unit import run_one_step

    edges = edges_with([60.0])

    def replica(name: str, values: list[float]) -> ReplicaReport:
        return ReplicaReport(
            name,
            outcomes={"ok": len(values)},
            latency=filled(values, edges),
            checkout_wait=filled([0.05] * len(values), edges),
            work_started_at=0.0,
            work_ended_at=1.0,
        )

    spec = {"steps": [3], "limits": {"maxLatencyP95Ms": 60}}
    parts = [[20.0] * 40, [59.9] * 30 + [75.0] * 3, [45.0] * 25 + [75.0] * 2]
    step = run_one_step(spec, [replica(f"r{i}", v) for i, v in enumerate(parts)]).status.variants[0].steps[0]
    assert step.outcome == "Passed", step.reason
    assert 59.9 * (1 - RELATIVE_ERROR) <= step.latency_ms.p95 <= 60
    assert step.latency_histogram.histogram().total == 100
    parts[0][0] = 75.0  # one value more above the limit: the 95th smallest is now 75 ms
    step = run_one_step(spec, [replica(f"r{i}", v) for i, v in enumerate(parts)]).status.variants[0].steps[0]
    assert step.outcome == "Failed"
    assert step.latency_ms.p95 > 60
    assert f"latency p95 {step.latency_ms.p95:g} ms exceeds limits.maxLatencyP95Ms 60 ms" in (step.reason or "")


def test_a_step_without_a_histogram_is_judged_on_its_reported_p95() -> None:
    limits = LimitsSpec(max_latency_p95_ms=60)
    assert limit_breaches(StepResult(replicas=1, latency_ms=Percentiles(p95=60)), limits) == []
    assert limit_breaches(StepResult(replicas=1, latency_ms=Percentiles(p95=61)), limits) == [
        "latency p95 61 ms exceeds limits.maxLatencyP95Ms 60 ms"
    ]
