"""A watch of a live server over time: the peaks of each pod's (or client group's) backends, the
connections they keep idle (the "ghosts"), the other tenants' peaks and the least headroom seen. Pure:
each read comes in as an ``Attribution`` with the time (seconds on the watcher's clock) it was taken.

Headroom is the usable slots minus every client backend attributed, the app's and the others'; the
watcher's own session is excluded from the reads (``exclude_pids``), so the headroom is what the app
and the others leave once the watch ends. The series for a status stays short: when it would exceed
``SERIES_POINTS`` points, neighbours merge pairwise (the lower headroom and the higher replica count of
the two are kept), so every point covers the same number of reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .attribution import Attribution

#: The most points of the headroom/replica series a status carries.
SERIES_POINTS = 120


@dataclass
class PodPeaks:
    """One pod's (or client group's) peaks over the watch."""

    peak_connections: int = 0
    kept_idle_peak: int = 0
    oldest_backend_age_seconds: float = 0.0

    def to_status(self) -> dict[str, Any]:
        return {
            "peakConnections": self.peak_connections,
            "keptIdlePeak": self.kept_idle_peak,
            "oldestBackendAgeSeconds": round(self.oldest_backend_age_seconds, 3),
        }


@dataclass
class SeriesPoint:
    """Reads merged into one point: the first read's time, the least headroom, the most replicas."""

    t: float
    headroom: int
    replicas: int | None
    reads: int = 1

    def merge(self, headroom: int, replicas: int | None, reads: int = 1) -> None:
        self.headroom = min(self.headroom, headroom)
        if replicas is not None:
            self.replicas = replicas if self.replicas is None else max(self.replicas, replicas)
        self.reads += reads

    def to_status(self) -> dict[str, Any]:
        return {"t": round(self.t, 3), "headroom": self.headroom, "replicas": self.replicas}


@dataclass
class Observation:
    """Accumulates reads (``add``); every field is a result so far."""

    series_points: int = SERIES_POINTS
    pods: dict[str, PodPeaks] = field(default_factory=dict)
    app_peak: int = 0
    unplaced_peak: int = 0
    others_peak: int = 0
    others_peak_by_owner: dict[tuple[str, str], int] = field(default_factory=dict)
    min_headroom: int | None = None
    usable: int | None = None  # the usable slots at the last read
    reads: int = 0
    first_t: float | None = None
    last_t: float | None = None
    series: list[SeriesPoint] = field(default_factory=list)
    _span: int = field(default=1, init=False, repr=False)  # reads per series point

    def add(self, t: float, replicas: int | None, attribution: Attribution, usable: int) -> None:
        """One read at ``t``: ``replicas`` the Deployment's count then (None: unknown or no pods),
        ``usable`` the slots a normal role may take."""
        self.reads += 1
        self.first_t = t if self.first_t is None else self.first_t
        self.last_t = t
        self.usable = usable
        for pod, backends in attribution.by_pod.items():
            peaks = self.pods.setdefault(pod, PodPeaks())
            peaks.peak_connections = max(peaks.peak_connections, len(backends))
            peaks.kept_idle_peak = max(peaks.kept_idle_peak, sum(1 for b in backends if b.kept_idle))
            oldest = max((b.backend_age_seconds for b in backends), default=0.0)
            peaks.oldest_backend_age_seconds = max(peaks.oldest_backend_age_seconds, oldest)
        self.app_peak = max(self.app_peak, attribution.app_total)
        self.unplaced_peak = max(self.unplaced_peak, len(attribution.app_unplaced))
        self.others_peak = max(self.others_peak, len(attribution.others))
        for owner, count in attribution.others_by_owner().items():
            self.others_peak_by_owner[owner] = max(self.others_peak_by_owner.get(owner, 0), count)
        headroom = usable - attribution.total
        self.min_headroom = headroom if self.min_headroom is None else min(self.min_headroom, headroom)
        self._extend_series(t, headroom, replicas)

    def _extend_series(self, t: float, headroom: int, replicas: int | None) -> None:
        if self.series and self.series[-1].reads < self._span:
            self.series[-1].merge(headroom, replicas)
            return
        self.series.append(SeriesPoint(t, headroom, replicas))
        if len(self.series) > self.series_points:
            self._coarsen()

    def _coarsen(self) -> None:
        """Merge neighbours pairwise: each point then covers twice the reads."""
        merged: list[SeriesPoint] = []
        for i in range(0, len(self.series), 2):
            point = self.series[i]
            if i + 1 < len(self.series):
                after = self.series[i + 1]
                point.merge(after.headroom, after.replicas, after.reads)
            merged.append(point)
        self.series = merged
        self._span *= 2

    @property
    def per_pod_peak(self) -> int:
        """The most backends one pod held at once (the max over pods)."""
        return max((p.peak_connections for p in self.pods.values()), default=0)

    @property
    def per_pod_kept_idle_peak(self) -> int:
        return max((p.kept_idle_peak for p in self.pods.values()), default=0)

    @property
    def duration_seconds(self) -> float:
        return 0.0 if self.first_t is None or self.last_t is None else self.last_t - self.first_t

    @classmethod
    def from_status(cls, data: Mapping[str, Any], series_points: int = SERIES_POINTS) -> Observation:
        """The watch a status recorded (``to_status``), to go on with: every peak, the least headroom,
        the reads and the series as they were. A series point's own read count is not in the status:
        each is taken as full (the span a watch of that many reads has), so later reads start new
        points and the peaks are exact either way."""
        restored = cls(series_points=series_points)
        restored.reads = int(data.get("reads") or 0)
        restored.usable = data.get("usable")
        restored.pods = {
            pod: PodPeaks(
                int(p.get("peakConnections") or 0),
                int(p.get("keptIdlePeak") or 0),
                float(p.get("oldestBackendAgeSeconds") or 0.0),
            )
            for pod, p in (data.get("pods") or {}).items()
        }
        restored.app_peak = int(data.get("appPeak") or 0)
        restored.unplaced_peak = int(data.get("unplacedPeak") or 0)
        restored.others_peak = int(data.get("othersPeak") or 0)
        restored.others_peak_by_owner = {
            (str(o.get("usename") or ""), str(o.get("applicationName") or "")): int(o.get("peak") or 0)
            for o in data.get("othersPeakByOwner") or []
        }
        restored.min_headroom = data.get("minHeadroom")
        restored.series = [
            SeriesPoint(float(p.get("t") or 0.0), int(p.get("headroom") or 0), p.get("replicas"))
            for p in data.get("series") or []
        ]
        if restored.series:
            span = 1
            while span * len(restored.series) < restored.reads:
                span *= 2
            restored._span = span
            for point in restored.series:
                point.reads = span
        if restored.reads:
            restored.first_t = restored.series[0].t if restored.series else 0.0
            restored.last_t = restored.first_t + float(data.get("durationSeconds") or 0.0)
        return restored

    def to_status(self) -> dict[str, Any]:
        return {
            "reads": self.reads,
            "durationSeconds": round(self.duration_seconds, 3),
            "usable": self.usable,
            "pods": {pod: peaks.to_status() for pod, peaks in sorted(self.pods.items())},
            "perPodPeak": self.per_pod_peak,
            "perPodKeptIdlePeak": self.per_pod_kept_idle_peak,
            "appPeak": self.app_peak,
            "unplacedPeak": self.unplaced_peak,
            "othersPeak": self.others_peak,
            "othersPeakByOwner": [
                {"usename": role, "applicationName": app, "peak": peak}
                for (role, app), peak in sorted(self.others_peak_by_owner.items())
            ],
            "minHeadroom": self.min_headroom,
            "series": [p.to_status() for p in self.series],
        }
