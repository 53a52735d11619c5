"""The summary a replica writes (POOLBENCH_SUMMARY_PATH; in Kubernetes its termination message) and the
runner, the operator and a multi-process replica's parent read back.

``ReplicaSummary.to_text`` is the one writer, ``ReplicaSummary.parse`` / ``from_json`` the one reader.
The reader trusts nothing: a termination message may be cut short or not ours, so a malformed field
reads as unknown (None, empty) instead of failing the benchmark.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..client_timeline import COARSE_BUCKETS_US, OpenTimeline
from ..histogram import Histogram
from .phases import ReplicaPhase, known_phase

#: Kubernetes keeps at most this many bytes of a termination message: the summary must fit.
SUMMARY_LIMIT = 4096


@dataclass
class ReplicaSummary:
    """What one replica (or one worker process of it) says about itself."""

    replica: str = ""  # its application_name (POOLBENCH_APP_NAME)
    phase: ReplicaPhase | None = None  # None: it has not said
    outcomes: dict[str, int] = field(default_factory=dict)  # attempts by outcome (poolbench.core.outcomes)
    first_error: str | None = None
    first_error_class: str | None = None
    first_error_at: float | None = None  # epoch seconds
    peak_checked_out: int = 0  # most connections checked out of its pool(s) at once
    started_at: str | None = None  # ISO 8601: the replica started
    work_done_at: str | None = None  # ISO 8601: its work ended (the hold began)
    finished_at: str | None = None  # ISO 8601: done or crashed
    latency: Histogram = field(default_factory=Histogram)  # successful statements, checkout request to commit
    checkout_wait: Histogram = field(default_factory=Histogram)  # every checkout, a failed one until it failed
    work_started_at: float | None = None  # epoch seconds: the first attempt
    work_ended_at: float | None = None  # epoch seconds: the last caller finished
    processes: int | None = None  # a replica of worker processes: how many summaries it merged
    connections: OpenTimeline | None = None  # its pools' real connections over time; None: not said

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"replica": self.replica, "phase": self.phase}
        if self.processes is not None:
            data["processes"] = self.processes
        data.update(
            {
                "outcomes": self.outcomes,
                "firstError": self.first_error,
                "firstErrorClass": self.first_error_class,
                "firstErrorAt": self.first_error_at,
                "peakCheckedOut": self.peak_checked_out,
                "startedAt": self.started_at,
                "workDoneAt": self.work_done_at,
                "finishedAt": self.finished_at,
                "latencyMs": self.latency.to_json(),
                "checkoutWaitMs": self.checkout_wait.to_json(),
                "workStartedAt": self.work_started_at,
                "workEndedAt": self.work_ended_at,
            }
        )
        if self.connections is not None:
            data["connections"] = timeline_json(self.connections)
        return data

    def to_text(self, limit: int | None = SUMMARY_LIMIT) -> str:
        """Compact JSON of at most ``limit`` bytes (SUMMARY_LIMIT: Kubernetes truncates a longer
        termination message, which would no longer parse; None: no limit, for a worker's pipe). When
        needed, the connections timeline is coarsened first (``OpenTimeline.coarser_versions``: the
        narrowest epoch-aligned buckets that fit; its maximum and totals stay exact), then the histograms
        (``Histogram.coarsened``: totals and limit counts exact, each time with the finest timeline that
        then fits), then the free texts, the first error and then the replica's name, are shortened.
        ASCII-escaped, so characters are bytes."""
        data = self.to_json()
        text = json.dumps(data, separators=(",", ":"))
        if limit is None or len(text) <= limit:
            return text
        versions = list(self.connections.coarser_versions()) if self.connections is not None else []
        for key, histogram in ((None, None), ("latencyMs", self.latency), ("checkoutWaitMs", self.checkout_wait)):
            if key is not None and histogram is not None:
                data[key] = histogram.coarsened().to_json()
            for version in versions:
                if 4 * len(version.counts) > limit:  # each point takes at least "d,n,": cannot fit
                    continue
                data["connections"] = timeline_json(version)
                text = json.dumps(data, separators=(",", ":"))
                if len(text) <= limit:
                    break
            else:
                text = json.dumps(data, separators=(",", ":"))
            if len(text) <= limit:
                break
        for key in ("firstError", "replica"):
            value = data.get(key) or ""
            while len(text) > limit and value:
                # Cut as many characters as the excess takes at this text's mean escaped width.
                width = (len(json.dumps(value)) - 2) / len(value)
                value = value[: max(0, len(value) - max(1, math.ceil((len(text) - limit) / width)))]
                data[key] = value
                text = json.dumps(data, separators=(",", ":"))
        return text

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> ReplicaSummary:
        if not data:
            return cls()
        processes = _integer(data.get("processes"))
        return cls(
            replica=_text(data.get("replica")) or "",
            phase=known_phase(data.get("phase")),
            outcomes=_counts(data.get("outcomes")),
            first_error=_text(data.get("firstError")),
            first_error_class=_text(data.get("firstErrorClass")),
            first_error_at=_number(data.get("firstErrorAt")),
            peak_checked_out=_integer(data.get("peakCheckedOut")) or 0,
            started_at=_text(data.get("startedAt")),
            work_done_at=_text(data.get("workDoneAt")),
            finished_at=_text(data.get("finishedAt")),
            latency=Histogram.from_json(_mapping(data.get("latencyMs"))),
            checkout_wait=Histogram.from_json(_mapping(data.get("checkoutWaitMs"))),
            work_started_at=_number(data.get("workStartedAt")),
            work_ended_at=_number(data.get("workEndedAt")),
            processes=processes,
            connections=timeline_from_json(_mapping(data.get("connections"))),
        )

    @classmethod
    def parse(cls, text: str | None) -> ReplicaSummary | None:
        """A summary from ``to_text``'s output; None when ``text`` is no JSON object (absent, cut short)."""
        try:
            data = json.loads(text) if text else None
        except ValueError:
            return None
        return cls.from_json(data) if isinstance(data, dict) else None


def timeline_json(timeline: OpenTimeline) -> dict[str, Any]:
    """``maxOpen``, ``connects``, ``closes`` (exact); ``bucketUs`` (0: exact, a width: coarsened, null: the
    maximum alone); the points as ``t0`` (the first time) and ``dt`` (each next one's distance), both in
    units of the bucket (microseconds when exact), and ``n`` (the count from that time on)."""
    data: dict[str, Any] = {
        "maxOpen": timeline.max_open,
        "connects": timeline.connects,
        "closes": timeline.closes,
        "bucketUs": timeline.bucket_us,
    }
    if timeline.bucket_us is not None:
        unit = timeline.bucket_us or 1
        times = timeline.times_us
        data["t0"] = times[0] // unit if times else 0
        data["dt"] = [(b - a) // unit for a, b in zip(times, times[1:], strict=False)]
        data["n"] = list(timeline.counts)
    return data


def timeline_from_json(data: Mapping[str, Any] | None) -> OpenTimeline | None:
    """The reader of ``timeline_json``. Points that do not make a timeline (lengths apart, times not
    increasing, negative counts, a bucket width not ours) are dropped: the maximum alone remains."""
    if data is None:
        return None
    max_open, connects, closes = (_integer(data.get(k)) for k in ("maxOpen", "connects", "closes"))
    if max_open is None or max_open < 0:
        return None
    totals = (max(connects or 0, 0), max(closes or 0, 0))
    bucket_us = _integer(data.get("bucketUs"))
    t0, deltas, counts = _integer(data.get("t0")), _integers(data.get("dt")), _integers(data.get("n"))
    if (
        (bucket_us != 0 and bucket_us not in COARSE_BUCKETS_US)
        or t0 is None
        or t0 < 0
        or deltas is None
        or counts is None
        or len(deltas) != max(len(counts) - 1, 0)
        or any(d <= 0 for d in deltas)
        or any(n < 0 for n in counts)
        or max(counts, default=0) > max_open
        or (bucket_us == 0 and max(counts, default=0) != max_open)
    ):
        return OpenTimeline((), (), max_open, *totals, None)
    unit = bucket_us or 1
    times = [t0 * unit]
    for d in deltas:
        times.append(times[-1] + d * unit)
    return OpenTimeline(tuple(times[: len(counts)]), tuple(counts), max_open, *totals, bucket_us)


def _integers(value: Any) -> list[int] | None:
    if not isinstance(value, list):
        return None
    numbers = [_integer(v) for v in value]
    return None if any(n is None for n in numbers) else [n for n in numbers if n is not None]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and math.isfinite(number) else None


def _mapping(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def _counts(value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping):
        return {}
    return {k: n for k, v in value.items() if isinstance(k, str) and (n := _integer(v)) is not None}
