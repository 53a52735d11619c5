"""What the workload pods say, turned into step progress and replica reports (pure).

Inputs are what the driver read: each pod's restart count and last termination message (the
replica's JSON summary, written to the termination-message path), and its live Prometheus metrics
read through the API server's pod proxy.

The replica's latency and checkout-wait histograms come back exactly: Prometheus buckets are edges
of ``poolbench.core.histogram`` in seconds (cumulative, written in decimal: the non-empty buckets and
the limit edges), turned back into per-bucket counts on the same edges in milliseconds; sum and max
are rounded to the microsecond, as the replica's summary has them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from poolbench.core.benchmark import ReplicaReport
from poolbench.core.client_timeline import OpenTimeline, merge_open_timelines
from poolbench.core.contracts import metrics
from poolbench.core.contracts.phases import DONE, HOLDING, ReplicaPhase, known_phase
from poolbench.core.contracts.summary import ReplicaSummary
from poolbench.core.histogram import Histogram
from poolbench.core.outcomes import OUTCOMES

LATENCY, CHECKOUT_WAIT = metrics.STATEMENT_LATENCY, metrics.CHECKOUT_WAIT
MAX_GAUGES = {metrics.STATEMENT_LATENCY_MAX: LATENCY, metrics.CHECKOUT_WAIT_MAX: CHECKOUT_WAIT}
STARTED, ENDED = metrics.WORK_STARTED, metrics.WORK_ENDED
MAX_OPEN = metrics.POOL_MAX_OPEN_CONNECTIONS
CONNECTS, CLOSES = metrics.POOL_CONNECTS + metrics.TOTAL, metrics.POOL_CLOSES + metrics.TOTAL
READINGS = (STARTED, ENDED, MAX_OPEN, CONNECTS, CLOSES)


@dataclass(frozen=True)
class Metrics:
    phase: ReplicaPhase | None = None
    outcomes: dict[str, int] = field(default_factory=dict)
    latency: Histogram = field(default_factory=Histogram)  # successful statements, checkout to commit
    checkout_wait: Histogram = field(default_factory=Histogram)
    work_started_at: float | None = None  # epoch seconds; None until the replica says
    work_ended_at: float | None = None
    connections: OpenTimeline | None = None  # the pool's maximum and totals only (no timeline in metrics)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def parse_metrics(text: str) -> Metrics:
    phase: ReplicaPhase | None = None
    outcomes: dict[str, int] = {}
    buckets: dict[str, list[tuple[str, float]]] = {LATENCY: [], CHECKOUT_WAIT: []}
    sums: dict[str, float] = {}
    maxima: dict[str, float] = {}
    readings: dict[str, float] = {}  # the work's times and the pool's connections
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if name == metrics.PHASE and sample.value == 1.0:
                phase = known_phase(sample.labels.get(metrics.PHASE))
            elif name == metrics.ATTEMPTS_TOTAL:
                outcome = sample.labels.get(metrics.OUTCOME_LABEL)
                if outcome in OUTCOMES:
                    outcomes[outcome] = int(sample.value)
            elif name.endswith(metrics.BUCKET) and name[: -len(metrics.BUCKET)] in buckets:
                buckets[name[: -len(metrics.BUCKET)]].append((sample.labels.get("le", "nan"), sample.value))
            elif name.endswith(metrics.SUM) and name[: -len(metrics.SUM)] in buckets:
                sums[name[: -len(metrics.SUM)]] = _ms(sample.value)
            elif name in MAX_GAUGES:
                maxima[MAX_GAUGES[name]] = _ms(sample.value)
            elif name in READINGS and sample.value >= 0:
                readings[name] = sample.value

    def histogram(name: str) -> Histogram:
        if not buckets[name]:
            return Histogram()
        return Histogram.from_cumulative(buckets[name], sums.get(name, 0.0), maxima.get(name, 0.0))

    stamps = {name: readings[name] for name in (STARTED, ENDED) if readings.get(name, 0) > 0}  # 0: not yet
    return Metrics(
        phase,
        outcomes,
        histogram(LATENCY),
        histogram(CHECKOUT_WAIT),
        stamps.get(STARTED),
        stamps.get(ENDED),
        pool_connections(readings),
    )


def pool_connections(readings: dict[str, float]) -> OpenTimeline | None:
    """The pool's maximum and totals as served (no timeline: an upper bound for all time); None when not served."""
    if MAX_OPEN not in readings:
        return None
    return OpenTimeline(
        (), (), int(readings[MAX_OPEN]), int(readings.get(CONNECTS, 0)), int(readings.get(CLOSES, 0)), None
    )


@dataclass(frozen=True)
class PodView:
    name: str
    restarts: int = 0
    metrics: Metrics | None = None  # None: not reachable (starting, or crashed)
    last_message: str | None = None  # termination message of the last terminated container
    summary: ReplicaSummary | None = None  # the running container's own summary, read once it is done

    @property
    def crashed(self) -> bool:
        return self.restarts > 0

    def summary_of_last_crash(self) -> ReplicaSummary | None:
        return ReplicaSummary.parse(self.last_message)


def may_still_run(pod: Any, finished: Mapping[str, int] | None = None) -> bool:
    """Whether a workload pod (the API's ``V1Pod``) may still run a replica that could open
    connections. Not while it is marked for deletion (the kubelet starts no container again) and
    either every container has terminated, or its replica said it is done (the hold over, its engine
    disposed of: it only waits for the signal to exit) and has not restarted since: ``finished`` maps
    such a pod's name to its restart count when it said so. A pod that was never seen done and has a
    container running, starting or never reported may still connect."""
    if pod.metadata.deletion_timestamp is None:
        return True
    statuses = (pod.status.container_statuses or []) if pod.status is not None else []
    said_done = (finished or {}).get(pod.metadata.name)
    if said_done is not None and statuses and sum(cs.restart_count or 0 for cs in statuses) == said_done:
        return False
    return not statuses or any(cs.state is None or cs.state.terminated is None for cs in statuses)


def finished_replicas(pods: list[PodView]) -> dict[str, int]:
    """The pods whose replica said it is done (``may_still_run``'s ``finished``), with their restart counts."""
    return {p.name: p.restarts for p in pods if p.metrics is not None and p.metrics.phase == DONE}


def work_done(pods: list[PodView], expected: int) -> bool:
    """Every replica finished its work (now holding its pool) or crashed."""
    return len(pods) >= expected and all(
        p.crashed or (p.metrics is not None and p.metrics.phase in (HOLDING, DONE)) for p in pods
    )


def step_done(pods: list[PodView], expected: int) -> bool:
    """Every replica finished its hold, or crashed at least once."""
    return len(pods) >= expected and all(p.crashed or (p.metrics is not None and p.metrics.phase == DONE) for p in pods)


def reports(pods: list[PodView]) -> list[ReplicaReport]:
    out = []
    for pod in pods:
        crash = pod.summary_of_last_crash()
        report = ReplicaReport.from_summary(pod.name, crash, restarts=pod.restarts)
        report.crashed = pod.crashed
        if pod.metrics is not None:  # the running container's counters add to the crashed one's
            m = pod.metrics
            for key, value in m.outcomes.items():
                report.outcomes[key] = report.outcomes.get(key, 0) + value
            report.latency.merge(m.latency)  # report's own histograms (from the summary): m is untouched
            report.checkout_wait.merge(m.checkout_wait)
            # The pod's work spans its containers: from the earliest start to the latest known end.
            started = [t for t in (report.work_started_at, m.work_started_at) if t is not None]
            ended = [t for t in (report.work_ended_at, m.work_ended_at) if t is not None]
            report.work_started_at = min(started) if started else None
            report.work_ended_at = max(ended) if ended else None
            # The running container's pool: its timeline once it is done (its summary), else its maximum for all
            # time (an upper bound), beside the crashed one's; final only once its work is over (a working
            # replica may connect again after this read).
            running = pod.summary.connections if pod.summary is not None and m.phase == DONE else m.connections
            if running is None or m.phase not in (HOLDING, DONE):
                report.connections = None
            elif report.connections is None and pod.restarts == 0:
                report.connections = running
            elif report.connections is not None:
                report.connections = merge_open_timelines([report.connections, running])
        if pod.crashed and not report.first_error:
            report.first_error = "the replica exited (no summary)"
        out.append(report)
    return out
