"""The operator's ``/metrics``: a collector that turns a ``MetricState`` snapshot into metric families
at each scrape (names: ``poolbench.core.contracts.operator_metrics``), in a registry of its own,
served by prometheus-client's HTTP server on its own daemon thread (never on kopf's event loop).

Histograms are the status' merged ones on their exact edges (``le`` in seconds, then +Inf): every
non-empty bucket with its lower edge too, and every limit edge. Prometheus's ``histogram_quantile``
interpolates linearly between two listed edges, so with both edges of each non-empty bucket listed its
reading stays inside the bucket the verdict's percentile is in (a grid bucket is under 4 % wide);
with only the upper edges it would interpolate across every empty bucket below.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from poolbench.core.contracts import operator_metrics as m
from poolbench.core.histogram import Histogram, seconds_label

from .metricstate import PHASES, MetricState, VariantMetrics

LABELS = list(m.BENCHMARK_LABELS)


def gauge(name: str, doc: str, variants: list[VariantMetrics], value: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=LABELS)
    for v in variants:
        family.add_metric(v.labels, float(getattr(v, value)))
    return family


def prometheus_buckets(h: Histogram) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs: each non-empty bucket's lower and upper edge, every limit edge
    (``Histogram.extra_edges``), then +Inf. The counts are exact: an edge left out has no value below it
    that a listed edge does not already count."""
    limits = set(h.extra_edges())
    listed: dict[float, int] = {}
    running = 0
    for index, (edge, count) in enumerate(zip(h.edges, h.counts, strict=True)):
        if count and index:
            listed.setdefault(h.edges[index - 1], running)
        running += count
        if count or edge in limits:
            listed[edge] = running
    return [(seconds_label(edge), float(total)) for edge, total in listed.items()] + [("+Inf", float(h.total))]


def histogram(name: str, doc: str, variants: list[VariantMetrics], value: str) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=LABELS)
    for v in variants:
        h: Histogram | None = getattr(v, value)
        if h is not None:
            family.add_metric(v.labels, prometheus_buckets(h), sum_value=round(h.sum_ms, 3) / 1000)
    return family


class BenchmarkCollector(Collector):
    """Serves a ``MetricState``: every family at each scrape, from one snapshot."""

    def __init__(self, state: MetricState):
        self.state = state

    def collect(self) -> Iterator[Metric]:
        variants, health = self.state.snapshot()
        backends = GaugeMetricFamily(
            m.BACKENDS, "The workload's client backends now, by state.", labels=[*LABELS, m.STATE_LABEL]
        )
        for v in variants:
            for state in m.STATES:
                backends.add_metric([*v.labels, state], float(v.backends.get(state, 0)))
        yield backends
        yield gauge(m.PEAK_BACKENDS, "The current (or last) step's peak of client backends.", variants, "peak")
        yield gauge(
            m.GHOST_BACKENDS, "Idle connections open when the last finished step's work ended.", variants, "ghosts"
        )
        yield gauge(m.USABLE_CONNECTIONS, "Slots the workload's role may use.", variants, "usable")
        yield gauge(m.MAX_CONNECTIONS, "The server's max_connections.", variants, "max_connections")
        yield gauge(m.REPLICAS, "Replicas of the current step.", variants, "replicas")
        yield gauge(m.STEP, "The current step (1-based; 0 before the first).", variants, "step")
        yield gauge(m.STEPS, "The plan's number of steps.", variants, "steps")
        failures = CounterMetricFamily(
            m.FAILURES, "Failed attempts by class (the status' error counts).", labels=[*LABELS, m.CLASS_LABEL]
        )
        for v in variants:
            for cls, count in (v.failures or {}).items():
                failures.add_metric([*v.labels, cls], float(count))
        yield failures
        yield histogram(m.STATEMENT_LATENCY, "Statement latency merged over the replicas.", variants, "latency")
        yield histogram(m.CHECKOUT_WAIT, "Pool checkout wait merged over the replicas.", variants, "checkout_wait")
        phase = GaugeMetricFamily(m.PHASE, "1 for the benchmark's current phase.", labels=[*LABELS, m.PHASE_LABEL])
        for v in variants:
            for name in PHASES:
                phase.add_metric([*v.labels, name], 1.0 if v.phase == name else 0.0)
        yield phase
        yield gauge(m.PROGRESS, "Epoch seconds of the benchmark's last progress.", variants, "progress_at")
        yield CounterMetricFamily(m.RECONCILES, "Handler runs (daemons started, deletions).", value=health.reconciles)
        yield CounterMetricFamily(m.STATUS_PATCHES, "Status patches written.", value=health.status_patches)
        yield CounterMetricFamily(m.API_ERRORS, "Kubernetes API calls that failed.", value=health.api_errors)
        yield GaugeMetricFamily(m.RUNNING_BENCHMARKS, "Benchmarks being run now.", value=health.running_benchmarks)


def registry_for(state: MetricState) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BenchmarkCollector(state))
    return registry


def serve(state: MetricState, port: int, addr: str = "0.0.0.0") -> None:
    """Start the HTTP server on its own daemon thread; returns at once."""
    start_http_server(port, addr=addr, registry=registry_for(state))
