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
        return data

    def to_text(self) -> str:
        """Compact JSON of at most SUMMARY_LIMIT bytes (Kubernetes truncates a longer termination
        message, which would no longer parse): when needed, the histograms are coarsened
        (``Histogram.coarsened``: totals and limit counts exact), then the free texts, the first error and
        then the replica's name, are shortened. ASCII-escaped, so characters are bytes."""
        data = self.to_json()
        text = json.dumps(data, separators=(",", ":"))
        for key, histogram in (("latencyMs", self.latency), ("checkoutWaitMs", self.checkout_wait)):
            if len(text) > SUMMARY_LIMIT:
                data[key] = histogram.coarsened().to_json()
                text = json.dumps(data, separators=(",", ":"))
        for key in ("firstError", "replica"):
            value = data.get(key) or ""
            while len(text) > SUMMARY_LIMIT and value:
                # Cut as many characters as the excess takes at this text's mean escaped width.
                width = (len(json.dumps(value)) - 2) / len(value)
                value = value[: max(0, len(value) - max(1, math.ceil((len(text) - SUMMARY_LIMIT) / width)))]
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
        )

    @classmethod
    def parse(cls, text: str | None) -> ReplicaSummary | None:
        """A summary from ``to_text``'s output; None when ``text`` is no JSON object (absent, cut short)."""
        try:
            data = json.loads(text) if text else None
        except ValueError:
            return None
        return cls.from_json(data) if isinstance(data, dict) else None


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
