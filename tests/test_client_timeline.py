"""The client witness's arithmetic (pure): timelines merged by time, coarsened into buckets, carried in a
replica's summary within its 4096 bytes, and summed into the step's client peak."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from poolbench.core.benchmark import ReplicaReport, aggregate_reports
from poolbench.core.client_timeline import COARSE_BUCKETS_US, OpenTimeline, iso_utc, merge_open_timelines
from poolbench.core.contracts.phases import ReplicaPhase
from poolbench.core.contracts.summary import SUMMARY_LIMIT, ReplicaSummary
from poolbench.core.histogram import Histogram
from poolbench.core.results import StepResult
from poolbench_operator.podstate import PodView, parse_metrics, reports
from workload.metrics import Measures, ReplicaMetrics

T0 = 1_764_657_000_000_000  # epoch microseconds


def timeline(points: list[tuple[int, int]], connects: int = 0, closes: int = 0) -> OpenTimeline:
    times = tuple(t for t, _ in points)
    counts = tuple(n for _, n in points)
    return OpenTimeline(times, counts, max(counts, default=0), connects, closes, 0)


def value_at(t: OpenTimeline, moment: int) -> int:
    """The count a timeline holds at ``moment`` (0 before its first point)."""
    held = 0
    for time, count in zip(t.times_us, t.counts, strict=True):
        if time > moment:
            break
        held = count
    return held


def brute_force_peak(timelines: list[OpenTimeline]) -> int:
    moments = {time for t in timelines for time in t.times_us}
    return max((sum(value_at(t, m) for t in timelines) for m in moments), default=0)


@st.composite
def exact_timelines(draw: st.DrawFn) -> OpenTimeline:
    """A pool's real history: connects (+1) and closes (-1), never below zero, at increasing microseconds."""
    steps = draw(st.lists(st.tuples(st.integers(1, 30_000), st.booleans()), max_size=60))
    time, count, points, connects, closes = T0 + draw(st.integers(0, 50_000)), 0, [], 0, 0
    for gap, opens in steps:
        time += gap
        if opens or count == 0:
            count, connects = count + 1, connects + 1
        else:
            count, closes = count - 1, closes + 1
        points.append((time, count))
    return timeline(points, connects, closes)


def test_three_pools_of_fifteen_peak_at_forty_five_when_they_overlap() -> None:
    a = timeline([(T0 + 10, 5), (T0 + 20, 15), (T0 + 90, 5), (T0 + 200, 0)])
    b = timeline([(T0 + 15, 15), (T0 + 95, 5), (T0 + 210, 0)])
    c = timeline([(T0 + 30, 15), (T0 + 80, 5), (T0 + 220, 0)])
    merged = merge_open_timelines([a, b, c])
    assert merged.max_open == 45
    assert merged.exact
    assert merged.peak_at_us == T0 + 30
    assert merged.counts[-1] == 0
    # Apart in time, the same pools never hold more than one's 15 plus the others' kept 5.
    late = timeline([(T0 + 100, 15), (T0 + 150, 5)])
    assert merge_open_timelines([a, late]).max_open == 20


@settings(max_examples=300, deadline=None)
@given(st.lists(exact_timelines(), min_size=1, max_size=6))
def test_merging_equals_brute_force_over_every_change_time(timelines: list[OpenTimeline]) -> None:
    merged = merge_open_timelines(timelines)
    assert merged.exact
    assert merged.max_open == brute_force_peak(timelines)
    for moment in merged.times_us:
        assert value_at(merged, moment) == sum(value_at(t, moment) for t in timelines)
    assert merged.connects == sum(t.connects for t in timelines)
    assert merged.closes == sum(t.closes for t in timelines)


@settings(max_examples=300, deadline=None)
@given(exact_timelines(), st.sampled_from(COARSE_BUCKETS_US[:8]))
def test_a_coarsened_timeline_is_at_or_above_the_exact_one_and_keeps_its_maximum(
    exact: OpenTimeline, bucket_us: int
) -> None:
    coarse = exact.coarsened(bucket_us)
    assert not coarse.exact
    assert coarse.bucket_us == bucket_us
    assert coarse.max_open == exact.max_open == max(coarse.counts, default=0)
    assert all(t % bucket_us == 0 for t in coarse.times_us)
    moments = set(exact.times_us) | set(coarse.times_us) | {t + bucket_us - 1 for t in coarse.times_us}
    for moment in moments:
        assert value_at(coarse, moment) >= value_at(exact, moment)
    # Each bucket with a change holds exactly the most the exact timeline held in it.
    for start in {t - t % bucket_us for t in exact.times_us}:
        inside = [n for t, n in zip(exact.times_us, exact.counts, strict=True) if start <= t < start + bucket_us]
        carried = [] if start in exact.times_us else [value_at(exact, start - 1)]
        assert value_at(coarse, start) == max([*carried, *inside])
    # Coarsening what was coarsened gives the same as coarsening the exact timeline.
    wider = next(w for w in COARSE_BUCKETS_US if w > bucket_us)
    assert coarse.coarsened(wider) == exact.coarsened(wider)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(exact_timelines(), st.sampled_from((0, *COARSE_BUCKETS_US[:8]))), min_size=1, max_size=5))
def test_a_merge_with_coarsened_inputs_is_an_upper_bound_of_the_exact_merge(
    inputs: list[tuple[OpenTimeline, int]],
) -> None:
    exact = merge_open_timelines([t for t, _ in inputs])
    mixed = merge_open_timelines([t.coarsened(w) if w else t for t, w in inputs])
    assert mixed.max_open >= exact.max_open
    assert mixed.exact == all(w == 0 for _, w in inputs)
    for moment in exact.times_us:
        assert value_at(mixed, moment) >= value_at(exact, moment)
    # A replica that said only its maximum counts it for all time: still a bound.
    bound = merge_open_timelines([inputs[0][0].maximum_only(), *[t for t, _ in inputs[1:]]])
    assert bound.max_open >= exact.max_open
    assert bound.bucket_us is None
    assert not bound.exact


def churn(connects: int, open_at_once: int = 8, gap_us: int = 1_700) -> OpenTimeline:
    """NullPool's shape: each caller connects and closes again for every statement."""
    points, count, time = [], 0, T0
    for i in range(2 * connects):
        time += gap_us + (i * 7919) % 997
        count = count + 1 if (i // open_at_once) % 2 == 0 else count - 1
        points.append((time, count))
    return timeline(points, connects, connects)


def busy_summary(connections: OpenTimeline, error: str | None = None) -> ReplicaSummary:
    latency = Histogram()
    for i in range(4000):
        latency.add(0.5 + (i * 37 % 1000) * 0.731)
    return ReplicaSummary(
        replica="pb-churn-s1-r0",
        phase="crashed" if error else "done",
        outcomes={"ok": 4000},
        first_error=error,
        latency=latency,
        checkout_wait=latency,
        connections=connections,
    )


def test_a_long_timeline_is_coarsened_to_fit_the_termination_message_with_the_maximum_exact() -> None:
    exact = churn(5_000)
    for error in (None, "sorry, too many clients already " * 40):
        summary = busy_summary(exact, error)
        text = summary.to_text()
        assert len(text.encode()) <= SUMMARY_LIMIT
        read = ReplicaSummary.parse(text)
        assert read is not None
        assert read.connections is not None
        said = read.connections
        assert (said.max_open, said.connects, said.closes) == (exact.max_open, 5_000, 5_000)
        assert not said.exact
        assert said.bucket_us in COARSE_BUCKETS_US
        assert said == exact.coarsened(said.bucket_us)  # the narrowest buckets that fit, nothing else lost
        narrower = COARSE_BUCKETS_US.index(said.bucket_us) - 1
        if narrower >= 0:  # the next narrower buckets would not have fitted
            finer = busy_summary(exact.coarsened(COARSE_BUCKETS_US[narrower]), error)
            assert len(finer.to_text(limit=None)) > SUMMARY_LIMIT
        # The histograms were not coarsened for the timeline: they fit at full resolution.
        if error is None:
            assert read.latency == summary.latency
    # Uncapped (a worker's pipe), the timeline stays exact.
    whole = ReplicaSummary.parse(busy_summary(exact).to_text(limit=None))
    assert whole is not None
    assert whole.connections == exact


def test_a_short_timeline_stays_exact_in_the_summary() -> None:
    exact = timeline(
        [(T0 + 1_000 * i, min(i + 1, 15)) for i in range(15)] + [(T0 + 90_000, 5), (T0 + 99_999, 0)], 15, 15
    )
    read = ReplicaSummary.parse(busy_summary(exact).to_text())
    assert read is not None
    assert read.connections == exact
    assert read.connections.exact


def test_a_malformed_timeline_reads_as_its_maximum_or_as_unknown() -> None:
    good = json.loads(busy_summary(timeline([(T0, 1), (T0 + 5, 2), (T0 + 9, 0)], 2, 2)).to_text())
    for broken in ({"dt": [5]}, {"n": [1, -2, 0]}, {"dt": [5, 0]}, {"bucketUs": 3}, {"t0": "x"}, {"n": [1, 3, 0]}):
        data = {**good, "connections": {**good["connections"], **broken}}
        said = ReplicaSummary.from_json(data).connections
        assert said is not None
        assert said.bucket_us is None
        assert said.times_us == ()
        assert said.max_open == 2
        assert (said.connects, said.closes) == (2, 2)
    for unknown in ({"maxOpen": None}, {"maxOpen": -1}, {"maxOpen": True}):
        data = {**good, "connections": {**good["connections"], **unknown}}
        assert ReplicaSummary.from_json(data).connections is None
    assert ReplicaSummary.from_json({**good, "connections": [1, 2]}).connections is None
    assert ReplicaSummary.from_json({k: v for k, v in good.items() if k != "connections"}).connections is None


def test_the_step_carries_the_merged_client_peak_and_says_whether_it_is_exact() -> None:
    a = timeline([(T0 + 10, 15), (T0 + 90, 5)], 15, 10)
    b = timeline([(T0 + 20, 15), (T0 + 95, 5)], 15, 10)
    step = aggregate_reports(StepResult(replicas=2), [report("r0", a), report("r1", b)])
    assert (step.client_peak_connections, step.client_peak_exact, step.client_connects) == (30, True, 30)
    assert step.client_peak_at == iso_utc(T0 + 20)
    coarse = aggregate_reports(StepResult(replicas=2), [report("r0", a.coarsened(1000)), report("r1", b)])
    assert coarse.client_peak_connections == 30
    assert coarse.client_peak_exact is False
    unknown = aggregate_reports(StepResult(replicas=2), [report("r0", a), report("r1", None)])
    assert unknown.client_peak_connections is None
    assert unknown.client_peak_exact is None
    as_json = step.to_json()
    assert as_json["clientPeakConnections"] == 30
    assert as_json["clientPeakExact"] is True


def report(name: str, connections: OpenTimeline | None) -> ReplicaReport:
    return ReplicaReport.from_summary(name, ReplicaSummary(replica=name, phase="done", connections=connections))


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 4_102_444_800_000_000))
def test_iso_times_match_the_standard_library(epoch_us: int) -> None:
    expected = datetime.fromtimestamp(epoch_us // 1000 / 1000, UTC).isoformat(timespec="milliseconds")
    assert iso_utc(epoch_us) == expected


def served_metrics(connections: OpenTimeline | None, phase: ReplicaPhase = "done") -> str:
    from prometheus_client import generate_latest

    served = ReplicaMetrics(dict, Measures, lambda: connections)
    served.set_phase(phase)
    return generate_latest(served.registry).decode()


def test_a_running_pod_serves_its_pools_maximum_and_the_cluster_step_sums_the_maxima_as_a_bound() -> None:
    a = timeline([(T0 + 10, 15), (T0 + 90, 5)], 15, 10)
    b = timeline([(T0 + 200, 12), (T0 + 300, 5)], 12, 7)
    read = parse_metrics(served_metrics(a))
    assert read.connections == a.maximum_only()
    assert parse_metrics(served_metrics(None)).connections is None  # a replica that serves none: unknown
    pods = [
        PodView("r0", metrics=parse_metrics(served_metrics(a))),
        PodView("r1", metrics=parse_metrics(served_metrics(b))),
    ]
    step = aggregate_reports(StepResult(replicas=2), reports(pods))
    # Apart in time the pools held at most 15 + 5 at once; from their maxima alone 27 is all that can be said.
    assert merge_open_timelines([a, b]).max_open == 17
    assert step.client_peak_connections == 27
    assert step.client_peak_exact is False
    assert step.client_connects == 27
    assert step.client_peak_at is None  # a sum of maxima has no moment
    # A restarted pod: the crashed container's timeline (its summary) beside the running one's maximum.
    crashed = ReplicaSummary(replica="r0", phase="crashed", connections=timeline([(T0, 3), (T0 + 5, 0)], 3, 3))
    restarted = PodView("r0", restarts=1, metrics=parse_metrics(served_metrics(a)), last_message=crashed.to_text())
    (report_,) = reports([restarted])
    assert report_.connections is not None
    assert report_.connections.max_open == 18
    assert report_.connections.connects == 18
    assert not report_.connections.exact
    # Still working: it may connect again after this read, so its maximum bounds nothing yet.
    (working,) = reports([PodView("r0", metrics=parse_metrics(served_metrics(a, "running")))])
    assert working.connections is None


@settings(max_examples=200, deadline=None)
@given(exact_timelines(), st.sampled_from((0, *COARSE_BUCKETS_US[:6])), st.integers(0, 10_000_000))
def test_a_process_found_dead_has_its_connections_closed_no_earlier_than_known(
    exact: OpenTimeline, bucket_us: int, after_us: int
) -> None:
    t = exact.coarsened(bucket_us) if bucket_us else exact
    found_dead = (t.times_us[-1] if t.times_us else T0) + after_us
    ended = t.closed_at(found_dead)
    assert value_at(ended, found_dead + max(bucket_us, 1)) == 0
    assert ended.connects - ended.closes == 0 or not t.counts
    for moment in t.times_us:
        assert value_at(ended, moment) == value_at(t, moment)
    assert ended.max_open == t.max_open
    assert ended.bucket_us == t.bucket_us


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 20_000), st.integers(1, 40), st.integers(1, 50_000), st.sampled_from([None, "x" * 3000]))
def test_any_timeline_fits_the_termination_message_and_keeps_its_maximum_and_totals(
    connects: int, open_at_once: int, gap_us: int, error: str | None
) -> None:
    exact = churn(connects, open_at_once, gap_us)
    text = busy_summary(exact, error).to_text()
    assert len(text.encode()) <= SUMMARY_LIMIT
    read = ReplicaSummary.parse(text)
    assert read is not None
    said = read.connections
    assert said is not None
    assert (said.max_open, said.connects, said.closes) == (exact.max_open, exact.connects, exact.closes)
    assert said.exact == (said == exact)
    if said.bucket_us:
        assert said == exact.coarsened(said.bucket_us)


def test_a_done_pod_serves_its_timeline_and_the_cluster_step_sums_it_exactly() -> None:
    a = timeline([(T0 + 10, 15), (T0 + 90, 5), (T0 + 400, 0)], 15, 15)
    b = timeline([(T0 + 200, 12), (T0 + 300, 5), (T0 + 410, 0)], 12, 12)
    pods = [
        PodView(name, metrics=parse_metrics(served_metrics(t)), summary=ReplicaSummary(replica=name, connections=t))
        for name, t in (("r0", a), ("r1", b))
    ]
    step = aggregate_reports(StepResult(replicas=2), reports(pods))
    assert step.client_peak_connections == 17
    assert step.client_peak_exact is True
    assert step.client_peak_at == iso_utc(T0 + 200)
    # Holding, its summary is not read yet: the maximum stands, as a bound.
    holding = [PodView("r0", metrics=parse_metrics(served_metrics(a, "holding")), summary=pods[0].summary)]
    (report_,) = reports(holding)
    assert report_.connections == a.maximum_only()


def test_a_replica_serves_its_summary_beside_its_metrics() -> None:
    import urllib.request

    from poolbench.core.contracts import metrics
    from poolbench.core.contracts.replica_env import WorkloadConfig
    from workload.metrics import serve_http
    from workload.replica import Replica

    replica = Replica(WorkloadConfig(app_name="served-r0"))  # an engine that never connects here
    server = serve_http(0, replica.registry, replica.summary_json)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{metrics.SUMMARY_HTTP_PATH}", timeout=5) as response:
            served = ReplicaSummary.parse(response.read().decode())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            scraped = parse_metrics(response.read().decode())
    finally:
        server.shutdown()
        replica.engine.dispose()
    assert served is not None
    assert served.replica == "served-r0"
    assert served.connections == OpenTimeline()
    assert scraped.connections == OpenTimeline(bucket_us=None)


def test_a_worker_report_without_points_keeps_the_points_only_while_nothing_changed() -> None:
    from workload.processes import died_with, keep_points

    whole = timeline([(T0, 1), (T0 + 5, 3)], 3, 0)
    holding = ReplicaSummary(phase="holding", connections=whole)
    same = ReplicaSummary(phase="holding", connections=whole.maximum_only())
    assert keep_points(holding, same).connections == whole
    moved = timeline([(T0, 1), (T0 + 5, 3), (T0 + 9, 2)], 3, 1).maximum_only()  # a close since
    assert keep_points(holding, replace(same, connections=moved)).connections == moved
    # Found dead after its work: closed by then; while working: unknown.
    ended = died_with(holding)
    assert ended is not None
    assert ended.counts[-1] == 0
    assert ended.closes == 3
    assert died_with(replace(holding, phase="running")) is None
