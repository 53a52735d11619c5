"""The client witness: how many real DB-API connections a pool held open over time (pure).

A replica counts its pools' real connects and closes from SQLAlchemy's pool events and reports the
count as a step function: ``times_us[i]`` (epoch microseconds, strictly increasing) is when the count
became ``counts[i]``; before the first point it was 0. Exact as recorded, one point per change.

A summary has room for a few hundred points; a pool that reconnects all the time (NullPool) makes
thousands. Then the timeline is *coarsened*: time is cut into fixed buckets aligned to the epoch
(``COARSE_BUCKETS_US``) and each bucket holds the most connections open at any moment in it. That
step function is at or above the exact one everywhere, so anything read from it (a peak, a merged
peak) is an upper bound, and says so (``exact`` is False). The maximum (``max_open``) and the totals
(``connects``, ``closes``) stay exact whatever happens to the points.

A timeline without points (``bucket_us`` None) says only the maximum: merged, it counts that many for
the whole step, the loosest upper bound.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: Bucket widths, in microseconds, a timeline is coarsened to (the narrowest one that fits); each is a
#: multiple of the one before it, so coarsening a coarsened timeline gives the same as coarsening the exact one.
COARSE_BUCKETS_US: tuple[int, ...] = tuple(
    ms * 1000
    for ms in (1, 2, 10, 20, 100, 200, 1_000, 2_000, 10_000, 20_000, 60_000, 120_000, 600_000, 3_600_000, 86_400_000)
)


@dataclass(frozen=True)
class OpenTimeline:
    """Connections open over time, with the exact maximum and the exact totals.

    ``bucket_us``: 0 when every point is a recorded change (exact); a width from ``COARSE_BUCKETS_US``
    when each point starts a bucket and holds that bucket's maximum (an upper bound); None when there
    are no points and only ``max_open`` is known (an upper bound for all time)."""

    times_us: tuple[int, ...] = ()
    counts: tuple[int, ...] = ()
    max_open: int = 0
    connects: int = 0
    closes: int = 0
    bucket_us: int | None = 0

    @property
    def exact(self) -> bool:
        return self.bucket_us == 0

    @property
    def peak_at_us(self) -> int | None:
        """When the most connections were first open (a bucket's start when coarsened); None without points."""
        for t, n in zip(self.times_us, self.counts, strict=True):
            if n == self.max_open:
                return t
        return None

    def coarsened(self, bucket_us: int) -> OpenTimeline:
        """Each epoch-aligned bucket of ``bucket_us`` holds the most connections open at any moment in it;
        a bucket without a change keeps the count carried into it. At or above this timeline everywhere."""
        if bucket_us <= 0 or self.bucket_us is None or (self.bucket_us and bucket_us % self.bucket_us):
            raise ValueError(f"cannot coarsen a timeline of buckets {self.bucket_us} µs to {bucket_us} µs")
        times: list[int] = []
        counts: list[int] = []

        def emit(t: int, n: int) -> None:  # each at a later bucket than the one before
            if not counts or counts[-1] != n:
                times.append(t)
                counts.append(n)

        carried, i, size = 0, 0, len(self.times_us)
        while i < size:
            bucket = self.times_us[i] // bucket_us
            # The count carried in holds until the bucket's first change: for none of it if that is at its start.
            most = carried if self.times_us[i] > bucket * bucket_us else 0
            while i < size and self.times_us[i] // bucket_us == bucket:
                carried = self.counts[i]
                most = max(most, carried)
                i += 1
            emit(bucket * bucket_us, most)
            if carried != most and (i == size or self.times_us[i] // bucket_us > bucket + 1):
                emit((bucket + 1) * bucket_us, carried)
        return OpenTimeline(tuple(times), tuple(counts), self.max_open, self.connects, self.closes, bucket_us)

    def closed_at(self, time_us: int) -> OpenTimeline:
        """Every connection still open counted closed at ``time_us`` (a process found dead: the system closed
        them by then), at the start of the next bucket when coarsened (never earlier than known)."""
        if not self.counts or self.counts[-1] == 0 or self.bucket_us is None:
            return self
        unit = self.bucket_us or 1
        time_us = max(-(-time_us // unit) * unit, self.times_us[-1] + unit)
        return OpenTimeline(
            (*self.times_us, time_us),
            (*self.counts, 0),
            self.max_open,
            self.connects,
            self.closes + self.counts[-1],
            self.bucket_us,
        )

    def maximum_only(self) -> OpenTimeline:
        """The same maximum and totals without points: the loosest bound, for when nothing else fits."""
        return OpenTimeline((), (), self.max_open, self.connects, self.closes, None)

    def coarser_versions(self) -> Iterable[OpenTimeline]:
        """This timeline, then coarser and coarser ones (each from the one before: cheap), then the maximum alone."""
        current = self
        yield current
        if current.bucket_us is not None:
            for width in COARSE_BUCKETS_US:
                if current.bucket_us and (width <= current.bucket_us or width % current.bucket_us):
                    continue
                current = current.coarsened(width)
                yield current
        yield self.maximum_only()


def merge_open_timelines(timelines: Sequence[OpenTimeline]) -> OpenTimeline:
    """The sum over the replicas, by time: at each moment any of them changed, the sum of what each held
    then. Exact when every input is; otherwise every point is an upper bound (``bucket_us`` the widest
    input's, None when an input gave only its maximum, which then counts for all time)."""
    widths = [t.bucket_us for t in timelines]
    bucket_us: int | None = None if None in widths else max((w for w in widths if w is not None), default=0)
    constant = sum(t.max_open for t in timelines if t.bucket_us is None)
    streams = [
        [(time, index, count) for time, count in zip(t.times_us, t.counts, strict=True)]
        for index, t in enumerate(timelines)
        if t.bucket_us is not None
    ]
    held = [0] * len(timelines)
    total = constant
    times: list[int] = []
    counts: list[int] = []
    for time, index, count in heapq.merge(*streams):
        total += count - held[index]
        held[index] = count
        if times and times[-1] == time:
            counts[-1] = total
        else:
            times.append(time)
            counts.append(total)
    if constant and not times:
        times, counts = [0], [constant]
    return OpenTimeline(
        tuple(times),
        tuple(counts),
        max(counts, default=0),
        sum(t.connects for t in timelines),
        sum(t.closes for t in timelines),
        bucket_us,
    )


def iso_utc(epoch_us: int) -> str:
    """RFC 3339 in UTC with milliseconds, from epoch microseconds (the core reads no clock and imports no
    datetime: the civil date from the day count, as in Howard Hinnant's ``civil_from_days``)."""
    ms = epoch_us // 1000
    days, ms_of_day = divmod(ms, 86_400_000)
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    seconds, millis = divmod(ms_of_day, 1000)
    hours, rest = divmod(seconds, 3600)
    return f"{year:04d}-{month:02d}-{day:02d}T{hours:02d}:{rest // 60:02d}:{rest % 60:02d}.{millis:03d}+00:00"
