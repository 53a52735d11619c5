"""Latency histograms with fine fixed buckets that merge exactly and judge limits exactly (pure).

Every replica counts its attempts into the same buckets: a grid of sixty edges per decade
(``GRID_MS``: four significant digits, 0.001 ms to 10⁹ ms) plus the benchmark's own limits as extra
edges (``edges_with``), so "p95 above the limit" is decided from counts (how many values are at most
the limit, against the rank), never from a reading. A step's histogram is the bucket-wise sum of its
replicas': no sampling and no approximation in the merge.

A percentile is read as the point of its bucket (lo, hi] closest in relative terms to every value in
it (2·lo·hi / (lo + hi)), clamped to the largest value seen: within ``RELATIVE_ERROR`` of the true
nearest-rank percentile for values from 0.001 ms to 10⁹ ms. The reading stays inside the bucket, and
a limit is an edge, so a reading is above a limit exactly when the limit is exceeded. ``max`` and
``mean`` are exact.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from math import isfinite
from typing import Any

PER_DECADE = 60
#: Edge mantissas of one decade: 1, 1.039, 1.08, 1.122 … 9.623 (10^(j/60), four significant digits).
MANTISSAS: tuple[str, ...] = tuple(f"{10 ** (j / PER_DECADE):.4g}" for j in range(PER_DECADE))
FIRST_DECADE, LAST_DECADE = -3, 9  # edges from 0.001 ms; the top edge is 10⁹ ms (11.6 days)
#: The grid's bucket upper bounds in milliseconds (inclusive). Values above the top count in the top bucket.
GRID_MS: tuple[float, ...] = tuple(float(f"{m}e{d}") for d in range(FIRST_DECADE, LAST_DECADE) for m in MANTISSAS) + (
    10.0**LAST_DECADE,
)
_GRID_SET = frozenset(GRID_MS)
_WIDEST = max((b - a) / (b + a) for a, b in zip(GRID_MS, GRID_MS[1:], strict=False))
#: The largest relative error of a percentile read from a grid bucket: (hi − lo) / (hi + lo) at the
#: widest bucket (1.948 %), plus the reading's rounding to five significant digits (an extra edge
#: only narrows a bucket).
RELATIVE_ERROR = _WIDEST + 5e-5 * (1 + _WIDEST)
#: A crashed container's histogram that does not fit its termination message is kept on every sixth
#: grid edge (ten per decade) plus its extra edges: counts and limits stay exact, readings coarser.
COARSE_STEP = 6


@lru_cache(maxsize=64)
def _edges(extra: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(sorted(_GRID_SET.union(extra)))


def edges_with(extra: Iterable[float] = ()) -> tuple[float, ...]:
    """The grid plus ``extra`` edges (the spec's limits), each a positive finite number of milliseconds."""
    wanted = tuple(sorted({float(e) for e in extra if isfinite(e) and 0 < e < GRID_MS[-1]} - _GRID_SET))
    return _edges(wanted)


def seconds_label(ms: float) -> str:
    """A Prometheus ``le`` label in seconds for an edge in milliseconds, in decimal, so that
    ``ms_of_label`` gives back the very same float (no binary rounding in the division)."""
    return format(Decimal(repr(ms)).scaleb(-3).normalize(), "f")


def ms_of_label(label: str) -> float:
    """An ``le`` label in seconds back to milliseconds: ``inf`` for +Inf; ValueError when malformed."""
    if label.strip() in ("+Inf", "Inf", "inf", "+inf"):
        return float("inf")
    try:
        return float(Decimal(label.strip()).scaleb(3))
    except InvalidOperation as err:
        raise ValueError(f"not a number: {label!r}") from err


def rank(q: float, total: int) -> int:
    """The nearest rank of the q-quantile: ceil(q × total), at least 1 (q given to nine decimals)."""
    scaled = round(q * 10**9)
    return max(1, -(-scaled * total // 10**9))


def _reading(lo: float, hi: float) -> float:
    """The point of (lo, hi] with the smallest largest relative error, to five significant digits
    (unrounded if rounding would leave the bucket)."""
    if lo <= 0:
        return hi
    mid = 2 * lo * hi / (lo + hi)
    rounded = float(f"{mid:.5g}")
    return rounded if lo < rounded <= hi else mid


def plain_number(value: float) -> str:
    """A float as the shortest text that reads back as the very same float, without a trailing '.0'."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def format_buckets(pairs: Iterable[tuple[float, int]]) -> str:
    """(upper bound in ms, count) pairs as one line, ``bound:count`` separated by spaces
    (``"0.5179:3 1.1:10 250:0"``): a status field a person reads at a glance, exact both ways."""
    return " ".join(f"{plain_number(bound)}:{count}" for bound, count in pairs)


def parse_buckets(text: object) -> list[tuple[float, int]]:
    """``format_buckets``' line back to its pairs; ValueError when it is not one."""
    if not isinstance(text, str):
        raise ValueError(f"buckets must be a string, not {type(text).__name__}")
    pairs = []
    for token in text.split():
        bound, colon, count = token.partition(":")
        if not colon:
            raise ValueError(f"bucket {token!r} is not bound:count")
        pairs.append((float(bound), int(count)))
    return pairs


@dataclass
class Histogram:
    """Counts per bucket: bucket i holds values in (edges[i-1], edges[i]] (bucket 0: up to edges[0];
    the top bucket also what lies above the top edge)."""

    edges: tuple[float, ...] = GRID_MS
    counts: list[int] = field(default_factory=list)
    sum_ms: float = 0.0
    max_ms: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.edges)
        if not self.counts:
            self.counts = [0] * n
        elif len(self.counts) == n + 1:  # a caller's tally with its above-the-top slot: fold it in
            self.counts = list(self.counts[: n - 1]) + [self.counts[n - 1] + self.counts[n]]
        elif len(self.counts) != n:
            raise ValueError(f"{len(self.counts)} counts for {n} edges")

    @property
    def total(self) -> int:
        return sum(self.counts)

    def add(self, ms: float) -> None:
        self.counts[min(bisect_left(self.edges, ms), len(self.edges) - 1)] += 1
        self.sum_ms += ms
        self.max_ms = max(self.max_ms, ms)

    def _on(self, edges: tuple[float, ...]) -> list[int]:
        """These counts on ``edges``, each moved to the first edge at or above its bucket's bound
        (exact when ``edges`` holds every edge of this histogram)."""
        if edges is self.edges or edges == self.edges:
            return list(self.counts)
        out = [0] * len(edges)
        for edge, count in zip(self.edges, self.counts, strict=True):
            if count:
                out[min(bisect_left(edges, edge), len(edges) - 1)] += count
        return out

    def merge(self, other: Histogram) -> Histogram:
        """Bucket-wise sum (in place); returns self. Histograms on different edges (one replica counted
        a limit edge the other did not) merge on the union of their edges: totals stay exact, and a
        count from a bucket a foreign edge splits stays at its bucket's upper bound."""
        if other.edges is not self.edges and other.edges != self.edges:
            union = tuple(sorted(set(self.edges) | set(other.edges)))
            self.counts, self.edges = self._on(union), union
        self.counts = [a + b for a, b in zip(self.counts, other._on(self.edges), strict=True)]
        self.sum_ms += other.sum_ms
        self.max_ms = max(self.max_ms, other.max_ms)
        return self

    def edge_index(self, ms: float) -> int | None:
        """The index of the edge equal to ``ms``, None if it is not an edge. Edges travel exactly (repr in
        the environment and JSON, decimal ``le`` labels), so equality is the test."""
        i = bisect_left(self.edges, ms)
        return i if i < len(self.edges) and self.edges[i] == ms else None

    def _bucket_of_rank(self, q: float) -> int:
        wanted, seen = rank(q, self.total), 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= wanted:
                return i
        return len(self.counts) - 1

    def percentile(self, q: float) -> float:
        """The q-quantile (0 < q ≤ 1), within RELATIVE_ERROR of the true nearest-rank value; 0 if empty."""
        if self.total == 0:
            return 0.0
        i = self._bucket_of_rank(q)
        lo, hi = (self.edges[i - 1] if i else 0.0), self.edges[i]
        reading = _reading(lo, hi)
        return min(reading, self.max_ms) if self.max_ms > lo or i == 0 else reading

    def exceeds(self, q: float, limit_ms: float) -> bool:
        """Whether the true q-quantile is above ``limit_ms``: exact when the limit is an edge (counted
        values at most the limit against the rank), otherwise from the reading."""
        total = self.total
        if total == 0:
            return False
        i = self.edge_index(limit_ms)
        if i is None:
            return self.percentile(q) > limit_ms
        return sum(self.counts[: i + 1]) < rank(q, total)

    def summary(self) -> dict[str, float]:
        """p50, p95, p99, max and mean in milliseconds (the status's latencyMs / checkoutWaitMs shape).
        The mean is exact (sum ÷ count): with an unfair pool, where the thread that returns a
        connection often takes it straight back, most checkouts wait nothing and a few wait long,
        so the median hides a queue that the mean and the tail show."""
        mean = self.sum_ms / self.total if self.total else 0.0
        return {
            "p50": self.percentile(0.50),
            "p95": self.percentile(0.95),
            "p99": self.percentile(0.99),
            "max": round(self.max_ms, 3),
            "mean": round(mean, 3),
        }

    def extra_edges(self) -> list[float]:
        return [e for e in self.edges if e not in _GRID_SET]

    def buckets(self) -> list[tuple[float, int]]:
        """(upper bound, count) of every non-empty bucket and of every extra edge (a limit edge is
        always listed, so whoever reads these back counts on the same edges)."""
        return [(e, c) for e, c in zip(self.edges, self.counts, strict=True) if c or e not in _GRID_SET]

    def to_json(self) -> dict[str, Any]:
        """The one written form of a histogram, in a replica's summary and in the status alike:
        ``{"buckets": "0.5179:3 1.1:10", "sumMs": …, "maxMs": …}`` (``format_buckets``)."""
        return {
            "buckets": format_buckets(self.buckets()),
            "sumMs": round(self.sum_ms, 3),
            "maxMs": round(self.max_ms, 3),
        }

    def coarsened(self) -> Histogram:
        """On every COARSE_STEP-th grid edge plus the extra edges (each count moves up to the next kept
        edge): totals and limit counts stay exact."""
        kept = tuple(sorted(set(GRID_MS[COARSE_STEP - 1 :: COARSE_STEP]) | {GRID_MS[-1]} | set(self.extra_edges())))
        return Histogram(kept, self._on(kept), self.sum_ms, self.max_ms)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Histogram:
        """From a replica's summary or the status; anything malformed counts as empty. Bounds that
        are not grid edges are the extra edges the replica counted on."""
        if not data:
            return cls()
        try:
            pairs = parse_buckets(data.get("buckets", ""))
            sum_ms, max_ms = float(data.get("sumMs", 0.0)), float(data.get("maxMs", 0.0))
        except (TypeError, ValueError):
            return cls()
        return cls.from_buckets(pairs, sum_ms, max_ms)

    @classmethod
    def from_buckets(cls, pairs: Iterable[tuple[float, int]], sum_ms: float, max_ms: float) -> Histogram:
        """From (upper bound, count) pairs, ascending; empty when they are not."""
        pairs = list(pairs)
        bounds = [b for b, _ in pairs]
        if any(not (isfinite(b) and b > 0) or c < 0 for b, c in pairs) or any(
            a >= b for a, b in zip(bounds, bounds[1:], strict=False)
        ):
            return cls()
        h = cls(edges_with(bounds), sum_ms=sum_ms, max_ms=max_ms)
        for b, c in pairs:
            h.counts[min(bisect_left(h.edges, b), len(h.edges) - 1)] += c
        return h

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: (``le`` in seconds, cumulative count) at every listed bucket (``buckets``),
        then +Inf. Empty buckets between listed ones are left out: the counts are still exact."""
        out, running = [], 0
        for edge, count in self.buckets():
            running += count
            out.append((seconds_label(edge), float(running)))
        out.append(("+Inf", float(self.total)))
        return out

    @classmethod
    def from_cumulative(cls, cumulative: Iterable[tuple[str, float]], sum_ms: float, max_ms: float) -> Histogram:
        """From Prometheus buckets (``le`` label in seconds, cumulative count), as ``cumulative`` writes
        them: each listed bucket holds the difference to the one before. Empty when malformed."""
        try:
            points = sorted((ms_of_label(le), int(value)) for le, value in cumulative)
        except (TypeError, ValueError):
            return cls()
        pairs: list[tuple[float, int]] = []
        previous = 0
        for ms, value in points:
            if value < previous:
                return cls()
            if ms == float("inf"):
                if value > previous:  # above every listed bound: the top bucket's
                    if pairs and pairs[-1][0] == GRID_MS[-1]:
                        pairs[-1] = (GRID_MS[-1], pairs[-1][1] + value - previous)
                    else:
                        pairs.append((GRID_MS[-1], value - previous))
                break
            pairs.append((ms, value - previous))
            previous = value
        return cls.from_buckets(pairs, sum_ms, max_ms)


def merged(histograms: Iterable[Histogram]) -> Histogram:
    out = Histogram()
    for h in histograms:
        out.merge(h)
    return out
