"""P5's log reading, with poolbench's own parts: the server log's lines parsed (``serverlog.parse_line``)
into the exact timeline (``timeline.ServerTimeline``), as the monitor does at every look."""

from __future__ import annotations

from poolbench.core.serverlog import LogEvent, parse_line
from poolbench.core.timeline import ServerTimeline


class TimelineReader:
    """The client backends open over time, from the log's lines; the monitor's own session excluded."""

    def __init__(self) -> None:
        self.timeline = ServerTimeline()
        self.first = float("inf")

    def exclude(self, pid: int) -> None:
        self.timeline.exclude(pid)

    def feed(self, lines: list[str]) -> list[LogEvent]:
        events = [event for event in map(parse_line, lines) if event is not None]
        if events:
            self.first = min(self.first, events[0].at)
        self.timeline.add_all(events)
        return events

    def open_count(self) -> int:
        return sum(1 for b in self.timeline.open.values() if b.counted)

    def peak(self) -> tuple[int, float]:
        """The exact peak of open connections over everything read, and when it was first reached."""
        if not self.timeline.backends:
            return 0, 0.0
        account = self.timeline.window(self.first - 1, self.timeline.latest + 1)
        return account.peak, account.peak_at
