"""Latency histograms with fixed buckets, so replicas merge exactly (pure).

Every replica counts its attempts into the same buckets (upper bounds in milliseconds, the last one
open-ended); a step's histogram is the bucket-wise sum of its replicas', with no sampling or
approximation in the merge. Percentiles are read from the merged buckets: the upper bound of the
bucket that holds the rank (clamped to the largest value seen), so a reported p95 is never below
the true p95 and at most one bucket above it. ``max`` is exact.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Bucket upper bounds in milliseconds: ten per decade (×1.26, three significant digits: 0.1, 0.126,
#: 0.158, 0.2, 0.251 … 50100, 63100), so a percentile read as its bucket's upper bound is at most 26 %
#: above the truth; values above the last go to the +Inf bucket.
BOUNDS_MS: tuple[float, ...] = tuple(float(f"{0.1 * 10 ** (i / 10):.3g}") for i in range(59))
BUCKETS = len(BOUNDS_MS) + 1  # the last counts everything above BOUNDS_MS[-1]


def bucket_of(ms: float) -> int:
    """The index of the bucket a value in milliseconds falls in (bounds are inclusive upper bounds)."""
    return bisect_left(BOUNDS_MS, ms)


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    sum_ms: float = 0.0
    max_ms: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts)

    def add(self, ms: float) -> None:
        self.counts[bucket_of(ms)] += 1
        self.sum_ms += ms
        self.max_ms = max(self.max_ms, ms)

    def merge(self, other: Histogram) -> Histogram:
        """Bucket-wise sum (in place); returns self."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum_ms += other.sum_ms
        self.max_ms = max(self.max_ms, other.max_ms)
        return self

    def percentile(self, q: float) -> float:
        """The q-quantile (0 < q ≤ 1) as the upper bound of the bucket holding that rank; 0 if empty."""
        total = self.total
        if total == 0:
            return 0.0
        rank = max(1, -(-q * total // 1))  # ceil(q × total), at least the first value
        seen = 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                bound = BOUNDS_MS[i] if i < len(BOUNDS_MS) else self.max_ms
                return min(bound, self.max_ms)
        return self.max_ms

    def summary(self) -> dict[str, float]:
        """p50, p95, p99, max and mean in milliseconds (the status's latencyMs / checkoutWaitMs shape).
        The mean is exact (sum ÷ count): with an unfair pool, where the thread that returns a
        connection often takes it straight back, most checkouts wait nothing and a few wait long,
        so the median hides a queue that the mean and the tail show."""
        mean = self.sum_ms / self.total if self.total else 0.0
        return {"p50": self.percentile(0.50), "p95": self.percentile(0.95), "p99": self.percentile(0.99),
                "max": round(self.max_ms, 3), "mean": round(mean, 3)}

    def to_json(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sumMs": round(self.sum_ms, 3), "maxMs": round(self.max_ms, 3)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Histogram:
        """From a replica's summary or the status; anything malformed counts as empty."""
        if not data:
            return cls()
        counts = data.get("counts")
        if not isinstance(counts, list) or len(counts) != BUCKETS:
            return cls()
        try:
            return cls([int(c) for c in counts], float(data.get("sumMs", 0.0)), float(data.get("maxMs", 0.0)))
        except (TypeError, ValueError):
            return cls()

    @classmethod
    def from_cumulative(cls, cumulative: Iterable[float], sum_ms: float, max_ms: float) -> Histogram:
        """From Prometheus-style cumulative bucket counts (one per bound, then +Inf)."""
        counts, previous = [], 0
        for value in cumulative:
            counts.append(int(value) - previous)
            previous = int(value)
        if len(counts) != BUCKETS:
            return cls()
        return cls(counts, sum_ms, max_ms)


def merged(histograms: Iterable[Histogram]) -> Histogram:
    out = Histogram()
    for h in histograms:
        out.merge(h)
    return out
