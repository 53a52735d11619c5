"""A replica's Prometheus metrics (names: ``poolbench.core.contracts.metrics``), built when scraped.

Nothing is recorded per statement: the attempts counter folds in the caller threads' own tallies and the
histograms are built from their bucket counts at each scrape, so the hot loop takes no lock and makes no
Prometheus call. A single-process replica and the parent of a multi-process one serve the same families.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Enum, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric

from poolbench.core.client_timeline import OpenTimeline
from poolbench.core.contracts import metrics
from poolbench.core.contracts.phases import PHASES, STARTING, ReplicaPhase
from poolbench.core.histogram import Histogram
from poolbench.core.outcomes import OUTCOMES


class TalliedCounter:
    """Serves a Counter whose increments live in per-thread tallies, folded in when it is collected."""

    def __init__(self, counter: Counter, read: Callable[[], dict[str, int]]):
        self.counter, self.read = counter, read
        self.synced: dict[str, int] = {}
        self.lock = threading.Lock()

    def sync(self) -> None:
        with self.lock:
            for outcome, total in self.read().items():
                delta = total - self.synced.get(outcome, 0)
                if delta > 0:
                    self.counter.labels(outcome).inc(delta)
                    self.synced[outcome] = total

    def describe(self) -> Iterable[Metric]:
        return self.counter.describe()

    def collect(self) -> Iterable[Metric]:
        self.sync()
        return self.counter.collect()


@dataclass
class Measures:
    """What the timing tallies add up to at one moment (merged over the caller threads)."""

    latency: Histogram = field(default_factory=Histogram)
    checkout_wait: Histogram = field(default_factory=Histogram)
    work_started_at: float | None = None  # epoch seconds
    work_ended_at: float | None = None


def histogram_family(name: str, documentation: str, h: Histogram) -> HistogramMetricFamily:
    """A Prometheus histogram in seconds from a millisecond one, listing the non-empty buckets and the
    limit edges (``Histogram.cumulative``). Sum and max are rounded to the microsecond first, as in the
    summary's ``to_json``, so the operator reads back the same figures."""
    return HistogramMetricFamily(name, documentation, buckets=h.cumulative(), sum_value=round(h.sum_ms, 3) / 1000)


class MeasuresCollector:
    """Serves the latency and checkout-wait histograms, their maxima and the work's start and end,
    built at scrape time from ``read()`` (the per-thread tallies): nothing is recorded per statement."""

    def __init__(self, read: Callable[[], Measures]):
        self.read = read

    def describe(self) -> Iterator[Metric]:
        return self._families(Measures())

    def collect(self) -> Iterator[Metric]:
        return self._families(self.read())

    @staticmethod
    def _families(m: Measures) -> Iterator[Metric]:
        yield histogram_family(
            metrics.STATEMENT_LATENCY, "Successful statements, from the checkout request to the commit", m.latency
        )
        yield histogram_family(
            metrics.CHECKOUT_WAIT, "Pool checkouts (connect included; a failed one until it failed)", m.checkout_wait
        )
        yield GaugeMetricFamily(
            metrics.STATEMENT_LATENCY_MAX, "Slowest successful statement", value=round(m.latency.max_ms, 3) / 1000
        )
        yield GaugeMetricFamily(
            metrics.CHECKOUT_WAIT_MAX, "Longest checkout wait", value=round(m.checkout_wait.max_ms, 3) / 1000
        )
        yield GaugeMetricFamily(
            metrics.WORK_STARTED, "When the first attempt started (0 until then)", value=m.work_started_at or 0.0
        )
        yield GaugeMetricFamily(
            metrics.WORK_ENDED, "When the last caller thread finished (0 until then)", value=m.work_ended_at or 0.0
        )


class ConnectionsCollector:
    """Serves the pool's real connections (open now, the most at once, connects and closes), read at each
    scrape: what the operator has of a running replica's client witness (it writes no summary until it exits)."""

    def __init__(self, read: Callable[[], OpenTimeline | None]):
        self.read = read

    def describe(self) -> Iterator[Metric]:
        return self._families(OpenTimeline())

    def collect(self) -> Iterator[Metric]:
        timeline = self.read()
        return self._families(timeline) if timeline is not None else iter(())

    @staticmethod
    def _families(t: OpenTimeline) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            metrics.POOL_OPEN_CONNECTIONS, "Real DB-API connections open now", value=t.connects - t.closes
        )
        yield GaugeMetricFamily(
            metrics.POOL_MAX_OPEN_CONNECTIONS, "Most real DB-API connections open at once", value=t.max_open
        )
        yield CounterMetricFamily(metrics.POOL_CONNECTS, "Real DB-API connections made", value=t.connects)
        yield CounterMetricFamily(metrics.POOL_CLOSES, "Real DB-API connections closed", value=t.closes)


class ReplicaMetrics:
    """A replica's registry: attempts by outcome, its phase and its measures, read from ``outcome_counts``
    and ``measures`` at each scrape. ``phase`` is what the replica says it is doing (summary and metric)."""

    def __init__(
        self,
        outcome_counts: Callable[[], dict[str, int]],
        measures: Callable[[], Measures],
        connections: Callable[[], OpenTimeline | None] = lambda: None,
    ):
        self.registry = CollectorRegistry()
        attempts = Counter(metrics.ATTEMPTS, "Statements attempted, by outcome", [metrics.OUTCOME_LABEL], registry=None)
        for outcome in OUTCOMES:
            attempts.labels(outcome)
        self.registry.register(TalliedCounter(attempts, outcome_counts))
        self._phase = Enum(metrics.PHASE, "Replica phase", states=list(PHASES), registry=self.registry)
        self.registry.register(MeasuresCollector(measures))
        self.registry.register(ConnectionsCollector(connections))
        self.phase: ReplicaPhase = STARTING
        self.set_phase(STARTING)

    def set_phase(self, phase: ReplicaPhase) -> None:
        self.phase = phase
        self._phase.state(phase)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # scrapes are not the replica's log
        pass


def serve_http(port: int, registry: CollectorRegistry, summary: Callable[[], str]) -> ThreadingWSGIServer:
    """The replica's port: ``/summary`` its summary as it is now (the 4096-byte form), every other path
    prometheus-client's own metrics app (content negotiation, compression). Serves from a daemon thread;
    returns the server (``server_address`` for port 0)."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").strip("/") == metrics.SUMMARY_HTTP_PATH:
            body = summary().encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        answer: Iterable[bytes] = metrics_app(environ, start_response)
        return answer

    server = make_server("", port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="poolbench-http").start()
    return server
