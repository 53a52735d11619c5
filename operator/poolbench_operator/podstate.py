"""What the workload pods say, turned into step progress and replica reports (pure).

Inputs are what the driver read: each pod's restart count and last termination message (the
replica's JSON summary, written to the termination-message path), and its live Prometheus metrics
read through the API server's pod proxy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from poolbench.core.benchmark import ReplicaReport
from poolbench.core.outcomes import OUTCOMES


@dataclass(frozen=True)
class Metrics:
    phase: str | None = None
    outcomes: dict[str, int] = field(default_factory=dict)


def parse_metrics(text: str) -> Metrics:
    phase = None
    outcomes: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "poolbench_phase" and sample.value == 1.0:
                phase = sample.labels.get("poolbench_phase")
            elif sample.name == "poolbench_attempts_total":
                outcome = sample.labels.get("outcome")
                if outcome in OUTCOMES:
                    outcomes[outcome] = int(sample.value)
    return Metrics(phase, outcomes)


@dataclass(frozen=True)
class PodView:
    name: str
    restarts: int = 0
    metrics: Metrics | None = None  # None: not reachable (starting, or crashed)
    last_message: str | None = None  # termination message of the last terminated container

    @property
    def crashed(self) -> bool:
        return self.restarts > 0

    def summary_of_last_crash(self) -> dict | None:
        try:
            data = json.loads(self.last_message) if self.last_message else None
        except ValueError:
            return None
        return data if isinstance(data, dict) else None


def work_done(pods: list[PodView], expected: int) -> bool:
    """Every replica finished its work (now holding its pool) or crashed."""
    return len(pods) >= expected and all(
        p.crashed or (p.metrics is not None and p.metrics.phase in ("holding", "done")) for p in pods
    )


def step_done(pods: list[PodView], expected: int) -> bool:
    """Every replica finished its hold, or crashed at least once."""
    return len(pods) >= expected and all(
        p.crashed or (p.metrics is not None and p.metrics.phase == "done") for p in pods
    )


def reports(pods: list[PodView]) -> list[ReplicaReport]:
    out = []
    for pod in pods:
        crash = pod.summary_of_last_crash()
        report = ReplicaReport.from_summary(pod.name, crash, restarts=pod.restarts)
        report.crashed = pod.crashed
        if pod.metrics is not None:  # the running container's counters add to the crashed one's
            for key, value in pod.metrics.outcomes.items():
                report.outcomes[key] = report.outcomes.get(key, 0) + value
        if pod.crashed and not report.first_error:
            report.first_error = "the replica exited (no summary)"
        out.append(report)
    return out
