"""What the operator's ``/metrics`` serves, as plain values: one ``VariantMetrics`` per benchmark and
variant, derived from the very ``BenchmarkStatus`` object the driver writes to the resource (plus the
last read's backends by state, which status only totals), and the operator's own health counts.

Nothing here knows Prometheus: the collector (``exporter``) turns a snapshot of ``MetricState`` into
metric families at each scrape. The drivers publish at each status write and each step-loop event, so
a scrape can never show a peak, a ghost count or a failure count that status does not (the same
object, read at the same moment). A benchmark's entry is dropped when its resource is deleted, so its
series disappear with it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import get_args

from poolbench.core.contracts.operator_metrics import DEFAULT_VARIANT, STATES
from poolbench.core.histogram import Histogram, merged
from poolbench.core.results import (
    ERROR_CLASSES,
    BenchmarkStatus,
    Phase,
    StepResult,
    VariantStatus,
    to_snake,
)

#: Every phase a benchmark can be in: the values of the phase state set.
PHASES: tuple[str, ...] = get_args(Phase)


@dataclass(frozen=True)
class VariantMetrics:
    """One benchmark's (or one of its variants') values, as served under labels namespace, benchmark, variant."""

    namespace: str
    benchmark: str
    variant: str
    phase: str
    progress_at: float  # epoch seconds
    step: int = 0
    steps: int = 0
    backends: Mapping[str, int] = field(default_factory=dict)  # by STATES, now
    peak: int = 0
    ghosts: int = 0
    usable: int = 0
    max_connections: int = 0
    replicas: int = 0
    failures: Mapping[str, int] | None = None  # by ERROR_CLASSES; None: not measured (own app)
    latency: Histogram | None = None  # merged over the finished steps; None: not measured (own app)
    checkout_wait: Histogram | None = None

    @property
    def labels(self) -> tuple[str, str, str]:
        return (self.namespace, self.benchmark, self.variant)


def by_state(counts: Mapping[str, int]) -> dict[str, int]:
    """``counts`` on exactly the STATES keys (a state never seen is 0; an unknown key counts as other)."""
    out = dict.fromkeys(STATES, 0)
    for key, value in counts.items():
        out[key if key in out else "other"] += value
    return out


def failures_of(steps: list[StepResult]) -> dict[str, int]:
    """Failed attempts by class over ``steps``: the sums of their status ``errors``."""
    return {key: sum(getattr(s.errors, to_snake(key)) for s in steps) for key in ERROR_CLASSES}


def from_benchmark(
    namespace: str,
    name: str,
    status: BenchmarkStatus,
    *,
    named_variants: bool,
    live_by_state: Mapping[str, int],
    progress_at: float,
) -> list[VariantMetrics]:
    """A built-in benchmark's values per variant, from its status. ``named_variants``: the spec lists
    variants (their names label the series); otherwise the one direct variant is DEFAULT_VARIANT.
    ``live_by_state``: the running step's last read (it belongs to ``status.current_variant``)."""
    # Before the first step (or with an invalid spec) there is no variant yet: the phase and the limits
    # are still served, under the default variant.
    variants = status.variants or [VariantStatus(name=DEFAULT_VARIANT)]
    out = []
    for index, variant in enumerate(variants):
        steps = variant.steps
        current = status.phase == "Running" and (
            variant.name == status.current_variant if named_variants else index == 0
        )
        finished = [s for s in steps if s.finished_at is not None]
        last = steps[-1] if steps else None
        out.append(
            VariantMetrics(
                namespace=namespace,
                benchmark=name,
                variant=variant.name if named_variants else DEFAULT_VARIANT,
                phase=status.phase,
                progress_at=progress_at,
                step=status.current_step,
                steps=status.total_steps,
                backends=by_state(live_by_state if current else {}),
                peak=last.peak_connections if last else 0,
                ghosts=finished[-1].idle_at_end if finished else 0,
                usable=last.usable_connections if last else 0,
                max_connections=status.max_connections,
                replicas=last.replicas if last else 0,
                failures=failures_of(steps),
                latency=merged(s.latency_histogram.histogram() for s in finished),
                checkout_wait=merged(s.checkout_wait_histogram.histogram() for s in finished),
            )
        )
    return out


def from_own_app(
    namespace: str,
    name: str,
    status: BenchmarkStatus,
    *,
    usable: int,
    live_by_state: Mapping[str, int],
    progress_at: float,
) -> list[VariantMetrics]:
    """An own-app benchmark (spec.target, Observe or Step): the app's backends now by state, its peak, the
    usable slots and the server's limit, as read live; no failure classes and no histograms (the app's
    statements are not poolbench's). Ghosts: the last finished step's idle peak per pod (Step) is not a
    server-wide count, so it is served as 0."""
    target = status.target
    steps = target.steps if target is not None else []
    running = status.phase == "Running"
    return [
        VariantMetrics(
            namespace=namespace,
            benchmark=name,
            variant=DEFAULT_VARIANT,
            phase=status.phase,
            progress_at=progress_at,
            step=status.current_step or len(steps),
            steps=status.total_steps or len(steps),
            backends=by_state(live_by_state if running else {}),
            peak=status.peak_connections,
            usable=usable,
            max_connections=status.max_connections,
            replicas=status.replicas,
        )
    ]


@dataclass
class OperatorHealth:
    """The operator's own counts (no benchmark labels)."""

    reconciles: int = 0
    status_patches: int = 0
    api_errors: int = 0
    running_benchmarks: int = 0


class MetricState:
    """Every benchmark's latest values and the operator's health, shared by the daemon threads (writers)
    and the scrape thread (reader); each change is a whole list swapped under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._benchmarks: dict[tuple[str, str], list[VariantMetrics]] = {}
        self._health = OperatorHealth()

    def publish(self, namespace: str, name: str, variants: list[VariantMetrics]) -> None:
        with self._lock:
            self._benchmarks[(namespace, name)] = variants

    def known(self, namespace: str, name: str) -> bool:
        with self._lock:
            return (namespace, name) in self._benchmarks

    def forget(self, namespace: str, name: str) -> None:
        """A deleted benchmark: its series go."""
        with self._lock:
            self._benchmarks.pop((namespace, name), None)

    def count(self, **deltas: int) -> None:
        """Add to the health counts by field name (``reconciles=1``, ``running_benchmarks=-1``)."""
        with self._lock:
            for key, delta in deltas.items():
                setattr(self._health, key, getattr(self._health, key) + delta)

    def snapshot(self) -> tuple[list[VariantMetrics], OperatorHealth]:
        with self._lock:
            variants = [v for key in sorted(self._benchmarks) for v in self._benchmarks[key]]
            health = OperatorHealth(**vars(self._health))
        return variants, health
