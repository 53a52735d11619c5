"""The operator's metrics: the values served (parsed back from the exposition) are the ones fed, and
the ones fed are the status' own."""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from poolbench.core.attribution import Attribution, Backend
from poolbench.core.contracts import operator_metrics as m
from poolbench.core.histogram import Histogram, merged, seconds_label
from poolbench.core.ownapp import app_backends_by_state
from poolbench.core.results import (
    ERROR_CLASSES,
    BenchmarkStatus,
    DatabaseStatus,
    HistogramCounts,
    StepResult,
    TargetStatus,
    VariantStatus,
)
from poolbench_operator.config import Config, ConfigError
from poolbench_operator.exporter import registry_for, serve
from poolbench_operator.metricstate import PHASES, MetricState, from_benchmark, from_own_app

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(state: MetricState) -> Samples:
    text = generate_latest(registry_for(state)).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def labels(variant: str = m.DEFAULT_VARIANT, name: str = "seed", **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"namespace": "ns", "benchmark": name, "variant": variant, **extra}.items()))


def histogram(values_ms: list[float]) -> HistogramCounts:
    h = Histogram()
    for v in values_ms:
        h.add(v)
    return HistogramCounts.model_validate(h.to_json())


def finished_step(replicas: int, peak: int, ghosts: int, errors: dict[str, int], latency: list[float]) -> StepResult:
    step = StepResult(
        replicas=replicas,
        started_at="2026-01-01T00:00:00Z",
        finished_at="2026-01-01T00:00:10Z",
        usable_connections=27,
        peak_connections=peak,
        idle_at_end=ghosts,
        latency_histogram=histogram(latency),
        checkout_wait_histogram=histogram([0.01 * v for v in latency]),
    )
    step.errors.add(errors)
    return step


def two_step_status() -> BenchmarkStatus:
    first = finished_step(2, 10, 4, {}, [1.0, 2.0, 2.5])
    second = finished_step(8, 27, 20, {"tooManyClients": 7, "other": 1}, [3.0, 40.0])
    status = BenchmarkStatus(phase="Failed", variants=[VariantStatus(name="direct", steps=[first, second])])
    status.current_step = status.total_steps = 2
    status.max_connections, status.peak_connections, status.failures = 30, 27, 8
    return status


def test_served_values_equal_the_status() -> None:
    status = two_step_status()
    state = MetricState()
    state.publish(
        "ns",
        "seed",
        from_benchmark("ns", "seed", status, named_variants=False, live_by_state={}, progress_at=1234.5),
    )
    got = scrape(state)
    last = status.variants[0].steps[-1]
    assert got[(m.PEAK_BACKENDS, labels())] == last.peak_connections == 27
    assert got[(m.GHOST_BACKENDS, labels())] == last.idle_at_end == 20
    assert got[(m.USABLE_CONNECTIONS, labels())] == 27
    assert got[(m.MAX_CONNECTIONS, labels())] == 30
    assert got[(m.REPLICAS, labels())] == 8
    assert got[(m.STEP, labels())] == got[(m.STEPS, labels())] == 2
    assert got[(m.PROGRESS, labels())] == 1234.5
    failures = {cls: got[(m.FAILURES + m.TOTAL, labels(**{"class": cls}))] for cls in ERROR_CLASSES}
    assert failures["tooManyClients"] == 7
    assert failures["other"] == 1
    assert sum(failures.values()) == status.failures
    assert {p: got[(m.PHASE, labels(phase=p))] for p in PHASES} == {p: float(p == "Failed") for p in PHASES}
    assert all(got[(m.BACKENDS, labels(state=s))] == 0 for s in m.STATES)  # finished: nothing held now


def test_histograms_are_the_merged_status_buckets_in_seconds() -> None:
    status = two_step_status()
    state = MetricState()
    state.publish(
        "ns", "seed", from_benchmark("ns", "seed", status, named_variants=False, live_by_state={}, progress_at=0)
    )
    got = scrape(state)
    want = merged(Histogram.from_json(s.latency_histogram.to_json()) for s in status.variants[0].steps)
    buckets = sorted(
        (float(dict(lbl)["le"]), value) for (name, lbl), value in got.items() if name == m.STATEMENT_LATENCY + "_bucket"
    )
    assert buckets[-1] == (float("inf"), 5.0)
    assert got[(m.STATEMENT_LATENCY + "_count", labels())] == 5
    assert got[(m.STATEMENT_LATENCY + "_sum", labels())] == pytest.approx(48.5 / 1000)
    # back from the exposition: the same buckets the verdict was judged on
    back = Histogram.from_cumulative([(str(le), v) for le, v in buckets], sum_ms=want.sum_ms, max_ms=want.max_ms)
    assert back.total == want.total
    assert [back.percentile(q) for q in (0.5, 0.95, 0.99)] == [want.percentile(q) for q in (0.5, 0.95, 0.99)]
    # each non-empty bucket is listed with both its edges, so Prometheus interpolates inside it
    listed = {dict(lbl)["le"] for name, lbl in got if name == m.STATEMENT_LATENCY + "_bucket"}
    for index, count in enumerate(want.counts):
        if count:
            assert {seconds_label(want.edges[index - 1]), seconds_label(want.edges[index])} <= listed
    assert got[(m.CHECKOUT_WAIT + "_count", labels())] == 5


def test_live_backends_by_state_belong_to_the_running_variant() -> None:
    running = finished_step(4, 12, 0, {"poolTimeout": 3}, [])
    running.finished_at = None
    status = BenchmarkStatus(
        phase="Running",
        current_step=3,
        total_steps=4,
        current_variant="pooled",
        variants=[
            VariantStatus(name="direct", steps=[finished_step(2, 10, 4, {}, [1.0])]),
            VariantStatus(name="pooled", steps=[running]),
        ],
    )
    live = {"active": 5, "idle": 6, "idle_in_transaction": 1}
    state = MetricState()
    state.publish(
        "ns", "seed", from_benchmark("ns", "seed", status, named_variants=True, live_by_state=live, progress_at=0)
    )
    got = scrape(state)
    assert {s: got[(m.BACKENDS, labels("pooled", state=s))] for s in m.STATES} == {**live, "other": 0}
    assert all(got[(m.BACKENDS, labels("direct", state=s))] == 0 for s in m.STATES)
    assert got[(m.PEAK_BACKENDS, labels("pooled"))] == 12
    assert got[(m.GHOST_BACKENDS, labels("pooled"))] == 0  # no finished step yet
    assert got[(m.GHOST_BACKENDS, labels("direct"))] == 4
    assert got[(m.FAILURES + m.TOTAL, labels("pooled", **{"class": "poolTimeout"}))] == 3
    assert got[(m.STATEMENT_LATENCY + "_count", labels("pooled"))] == 0  # the running step is not merged yet


def test_own_app_feeds_the_same_gauges() -> None:
    backends = [
        Backend(pid, "app", "web", "db", "10.0.0.1", state, 1.0, 0.5)
        for pid, state in enumerate(["active", "idle", "idle", "idle in transaction", None])
    ]
    attribution = Attribution(by_pod={"web-1": tuple(backends[:4])}, app_unplaced=(backends[4],), others=())
    live = app_backends_by_state(attribution)
    status = BenchmarkStatus(phase="Running", replicas=3, peak_connections=9, max_connections=100)
    status.target = TargetStatus(deployment="web", mode="Observe")
    status.database = DatabaseStatus(host="db", port=5432, dbname="db", usable_for_normal_role=97)
    state = MetricState()
    state.publish("ns", "own", from_own_app("ns", "own", status, usable=96, live_by_state=live, progress_at=0))
    got = scrape(state)
    assert {s: got[(m.BACKENDS, labels(name="own", state=s))] for s in m.STATES} == {
        "active": 1,
        "idle": 2,
        "idle_in_transaction": 1,
        "other": 1,
    }
    assert got[(m.PEAK_BACKENDS, labels(name="own"))] == 9
    assert got[(m.USABLE_CONNECTIONS, labels(name="own"))] == 96
    assert got[(m.REPLICAS, labels(name="own"))] == 3
    assert not any(name.startswith(m.FAILURES) for name, _ in got)  # an app's failures are not classed


def test_a_forgotten_benchmark_has_no_series_and_health_counts() -> None:
    state = MetricState()
    status = two_step_status()
    for name in ("a", "b"):
        state.publish(
            "ns", name, from_benchmark("ns", name, status, named_variants=False, live_by_state={}, progress_at=0)
        )
    state.count(reconciles=2, running_benchmarks=1, status_patches=5, api_errors=1)
    state.forget("ns", "a")
    got = scrape(state)
    assert {dict(lbl)["benchmark"] for name, lbl in got if name == m.PEAK_BACKENDS} == {"b"}
    assert got[(m.RECONCILES + m.TOTAL, ())] == 2
    assert got[(m.STATUS_PATCHES + m.TOTAL, ())] == 5
    assert got[(m.API_ERRORS + m.TOTAL, ())] == 1
    assert got[(m.RUNNING_BENCHMARKS, ())] == 1


def test_every_served_name_is_a_contract_constant() -> None:
    state = MetricState()
    state.publish(
        "ns",
        "seed",
        from_benchmark("ns", "seed", two_step_status(), named_variants=False, live_by_state={}, progress_at=0),
    )
    text = generate_latest(registry_for(state)).decode()
    served = {f.name for f in text_string_to_metric_families(text)}
    contract = {
        value
        for key, value in vars(m).items()
        if key.isupper() and isinstance(value, str) and value.startswith("poolbench_")
    }
    assert served == contract


def test_the_server_serves_on_the_configured_port() -> None:
    with pytest.raises(ConfigError, match="POOLBENCH_METRICS_PORT"):
        Config.from_env({"POOLBENCH_METRICS_PORT": "70000"})
    assert Config.from_env({}).metrics_port == 8000  # kopf's liveness endpoint has 8080
    assert Config.from_env({"POOLBENCH_METRICS_PORT": "0"}).metrics_port == 0
    state = MetricState()
    state.count(reconciles=1)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    serve(state, free, addr="127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{free}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert f"{m.RECONCILES}{m.TOTAL} 1.0" in text


def test_the_monitoring_page_lists_exactly_the_contract() -> None:
    """docs/guides/monitoring.md's tables name every metric the contract has, as served, and no other."""
    page = (Path(__file__).parents[1] / "docs/guides/monitoring.md").read_text()
    rows = re.findall(r"^\| `(poolbench_[a-z_]+)` \| ([a-z ()]+) \|", page, flags=re.MULTILINE)
    documented = {name: kind for name, kind in rows}
    counters = {m.FAILURES, m.RECONCILES, m.STATUS_PATCHES, m.API_ERRORS}
    names = [value for key, value in vars(m).items() if key.isupper() and isinstance(value, str)]
    served = {name + (m.TOTAL if name in counters else "") for name in names if name.startswith("poolbench_")}
    assert set(documented) == served
    assert {name for name, kind in documented.items() if kind == "counter"} == {c + m.TOTAL for c in counters}
    assert {name for name, kind in documented.items() if kind == "histogram"} == {
        m.STATEMENT_LATENCY,
        m.CHECKOUT_WAIT,
    }


def test_before_the_first_step_the_phase_and_limits_are_served() -> None:
    state = MetricState()
    status = BenchmarkStatus(phase="Provisioning", total_steps=2, max_connections=30)
    state.publish(
        "ns", "seed", from_benchmark("ns", "seed", status, named_variants=True, live_by_state={}, progress_at=0)
    )
    got = scrape(state)
    assert got[(m.PHASE, labels(phase="Provisioning"))] == 1
    assert got[(m.MAX_CONNECTIONS, labels())] == 30
    assert got[(m.STEP, labels())] == 0
    assert got[(m.FAILURES + m.TOTAL, labels(**{"class": "tooManyClients"}))] == 0
