"""The server's exact account of its connections, from the events of its log (pure, no I/O).

Each client backend holds a connection from its ``connection authorized`` line to its end: its
disconnection, the FATAL error that ended it, or the server ending every backend (a crash, a
shutdown, a new postmaster). A refused attempt never holds one, even when the server logged it as
authorized before refusing it (a reserved slot, a role's or a database's CONNECTION LIMIT). The
monitor's own sessions are left out: it names its PIDs (``exclude``); so is every session of
poolbench's own by its application_name (``serverlog.OWN_SESSION_NAMES``: the readiness check after a
restart, the role setup), as the reads leave them out. Times stay the server's
epoch seconds here; the monitor maps them onto the platform's clock.

A step's account (``window``) gives the exact peak of open connections and when it was first
reached, every refusal with its time and class, and the connections still open at the step's end
with their ages and owners (``application_name``): the ghosts, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .serverlog import CLOSED, ENDED, FAILED, MARKER, OPENED, OWN_SESSION_NAMES, REFUSED, SERVER_ENDED, LogEvent

#: A FATAL start-up error cancels an opening at most this long before it (the server authorizes and
#: then refuses within its start-up); an older backend of that PID was a stale one (its end went
#: missing from the log) and simply ends there.
STARTUP_SECONDS = 5.0
#: How a backend ended when a new one took its PID and the log never said the old one ended.
PID_REUSED = "pidReused"


def iso_utc(epoch: float) -> str:
    """Epoch seconds as RFC 3339 in UTC to the millisecond (``2026-12-02T06:30:45.198Z``), by the
    civil-from-days arithmetic (the core reads no clock and imports no ``datetime``)."""
    millis = round(epoch * 1000)
    days, ms_of_day = divmod(millis, 86_400_000)
    era, day_of_era = divmod(days + 719_468, 146_097)
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    mp = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = year_of_era + era * 400 + (1 if month <= 2 else 0)
    seconds, ms = divmod(ms_of_day, 1000)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{year:04d}-{month:02d}-{day:02d}T{hours:02d}:{minutes:02d}:{secs:02d}.{ms:03d}Z"


def _shift(connection: OpenConnection, offset: float) -> OpenConnection:
    closed = connection.closed_at
    return replace(
        connection, opened_at=connection.opened_at - offset, closed_at=None if closed is None else closed - offset
    )


def _same_start(opened_at: float, started_at: float | None) -> bool:
    """An authorized line at ``opened_at`` is the session that started at ``started_at`` (a PID is
    reused only after its backend ended: seconds apart at least, on a server with free PIDs)."""
    return started_at is None or abs(opened_at - started_at) < STARTUP_SECONDS


@dataclass(slots=True)
class Backend:
    """One client backend that opened a session. ``counted``: the workload's (not the monitor's, not
    refused in its start-up)."""

    pid: int
    opened_at: float
    application_name: str
    open_seq: int
    closed_at: float | None = None
    close_seq: int = 0
    ended_by: str = ""  # "" (disconnected), a SQLSTATE (a FATAL error), or why the server ended it
    counted: bool = True


@dataclass(frozen=True, slots=True)
class Refusal:
    at: float
    pid: int
    cause: str  # the class: outcomes.TOO_MANY_CLIENTS, outcomes.RESERVED_SLOTS, or serverlog's limits


@dataclass(frozen=True, slots=True)
class OpenConnection:
    """A connection open at some moment: whose (its application_name) and since when."""

    pid: int
    application_name: str
    opened_at: float
    age: float  # seconds open at that moment
    closed_at: float | None = None  # when it ended, if the log has said so yet


@dataclass(frozen=True)
class WindowAccount:
    """The server's account of ``[start, end]``: in the server's epoch seconds as the timeline gives
    it, on the platform's clock once ``shifted`` (``epoch_offset`` maps its times back to the epoch)."""

    start: float
    end: float
    peak: int
    peak_at: float  # when the peak was first reached (``start`` when it was already there)
    open_at_start: int
    opened: int  # sessions that opened within the window
    refusals: tuple[Refusal, ...]
    ghosts_at: float  # when ``ghosts`` were counted: the work's end, else the window's end
    ghosts: tuple[OpenConnection, ...]  # the connections open then, oldest first
    server_ends: tuple[tuple[float, str], ...]  # the server ended every backend: when, and its message
    points: tuple[tuple[float, int], ...]  # (time, open connections) after each change, from ``start``
    at_peak: tuple[OpenConnection, ...] = ()  # the connections open when the peak was first reached
    epoch_offset: float = 0.0  # add to a time here to get the server's epoch seconds
    ended_by_server: int = 0  # connections the server ended itself in the window (a FATAL error, a crash)

    @property
    def first_refusal_at(self) -> float | None:
        return self.refusals[0].at if self.refusals else None

    def iso(self, t: float) -> str:
        """A time of this account as the status writes times, to the millisecond (the server's clock)."""
        return iso_utc(t + self.epoch_offset)

    def shifted(self, offset: float) -> WindowAccount:
        """The same account with every time minus ``offset`` (the server's epoch onto another clock)."""
        return replace(
            self,
            start=self.start - offset,
            end=self.end - offset,
            peak_at=self.peak_at - offset,
            refusals=tuple(replace(r, at=r.at - offset) for r in self.refusals),
            ghosts_at=self.ghosts_at - offset,
            ghosts=tuple(_shift(c, offset) for c in self.ghosts),
            at_peak=tuple(_shift(c, offset) for c in self.at_peak),
            server_ends=tuple((t - offset, why) for t, why in self.server_ends),
            points=tuple((t - offset, n) for t, n in self.points),
            epoch_offset=self.epoch_offset + offset,
        )

    def refusals_by_cause(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for refusal in self.refusals:
            counts[refusal.cause] = counts.get(refusal.cause, 0) + 1
        return counts


class ServerTimeline:
    """Feed it the log's events in the order they were written (``add``); ask it for a window."""

    def __init__(self) -> None:
        self.open: dict[int, Backend] = {}
        self.backends: list[Backend] = []
        self.refusals: list[Refusal] = []
        self.server_ends: list[tuple[float, str]] = []
        self.markers: dict[str, float] = {}
        self.monitor_pids: dict[int, float | None] = {}  # announced, the backend not yet seen open
        self.seq = 0
        self.latest = float("-inf")  # the latest time of any event seen

    def exclude(self, pid: int, started_at: float | None = None) -> None:
        """The monitor's own session has this PID (and started at ``started_at``, the server's
        ``backend_start``): its backend, open now or the one the log shows opening with this PID
        (then), is not the workload's. The log lags, so the announcement may come first."""
        backend = self.open.get(pid)
        if backend is not None and _same_start(backend.opened_at, started_at):
            backend.counted = False
        else:
            self.monitor_pids[pid] = started_at

    def add_all(self, events: list[LogEvent]) -> None:
        for event in events:
            self.add(event)

    def add(self, event: LogEvent) -> None:
        self.seq += 1
        if event.at > self.latest:
            self.latest = event.at
        kind = event.kind
        if kind == OPENED:
            self._opened(event)
        elif kind in (CLOSED, ENDED):
            backend = self.open.pop(event.pid, None)
            if backend is not None:
                self._close(backend, event.at, "" if kind == CLOSED else event.cause)
        elif kind in (REFUSED, FAILED):
            self._refused(event)
        elif kind == SERVER_ENDED:
            for backend in self.open.values():
                self._close(backend, event.at, event.cause)
            self.open.clear()
            self.server_ends.append((event.at, event.cause))
        elif kind == MARKER:
            self.markers[event.marker] = event.at

    def _opened(self, event: LogEvent) -> None:
        stale = self.open.pop(event.pid, None)
        if stale is not None:
            self._close(stale, event.at, PID_REUSED)
        backend = Backend(event.pid, event.at, event.application_name, self.seq)
        if event.pid in self.monitor_pids and _same_start(event.at, self.monitor_pids[event.pid]):
            del self.monitor_pids[event.pid]
            backend.counted = False
        elif event.application_name in OWN_SESSION_NAMES:
            backend.counted = False
        self.open[event.pid] = backend
        self.backends.append(backend)

    def _refused(self, event: LogEvent) -> None:
        backend = self.open.pop(event.pid, None)
        if backend is not None:
            if backend.opened_at >= event.at - STARTUP_SECONDS:
                backend.counted = False  # authorized, then refused in its start-up: never open
            self._close(backend, event.at, event.cause)
        if event.kind == REFUSED:
            self.refusals.append(Refusal(event.at, event.pid, event.cause))

    def _close(self, backend: Backend, at: float, ended_by: str) -> None:
        backend.closed_at = max(at, backend.opened_at)
        backend.close_seq = self.seq
        backend.ended_by = ended_by

    def open_at(self, t: float) -> list[OpenConnection]:
        """The workload's connections open at ``t``, oldest first."""
        found = [
            OpenConnection(b.pid, b.application_name, b.opened_at, t - b.opened_at, b.closed_at)
            for b in self.backends
            if b.counted and b.opened_at <= t and (b.closed_at is None or b.closed_at > t)
        ]
        found.sort(key=lambda c: c.opened_at)
        return found

    def window(self, start: float, end: float, ghosts_at: float | None = None) -> WindowAccount:
        """The exact account of ``[start, end]``: changes ordered by time, then by the log's order
        (the log's times have milliseconds; within one, the order the lines were written). The
        ghosts are the connections open at ``ghosts_at`` (the work's end), else at ``end``."""
        at_start = 0
        changes: list[tuple[float, int, int]] = []
        opened = ended_by_server = 0
        for b in self.backends:
            if not b.counted or b.opened_at > end or (b.closed_at is not None and b.closed_at <= start):
                continue
            if b.opened_at <= start:
                at_start += 1
            else:
                opened += 1
                changes.append((b.opened_at, b.open_seq, 1))
            if b.closed_at is not None and b.closed_at <= end:
                changes.append((b.closed_at, b.close_seq, -1))
                if b.ended_by not in ("", PID_REUSED):  # not its client's doing: the server's
                    ended_by_server += 1
        changes.sort()
        count = peak = at_start
        peak_at, peak_seq = start, self.seq + 1  # at ``start``: after all of its changes
        points: list[tuple[float, int]] = [(start, at_start)]
        for t, seq, delta in changes:
            count += delta
            if count > peak:
                peak, peak_at, peak_seq = count, t, seq
            if points[-1][0] == t:
                points[-1] = (t, count)
            else:
                points.append((t, count))
        points.append((end, count))
        refusals = tuple(r for r in self.refusals if start <= r.at <= end)
        ends = tuple(e for e in self.server_ends if start <= e[0] <= end)
        return WindowAccount(
            start=start,
            end=end,
            peak=peak,
            peak_at=peak_at,
            open_at_start=at_start,
            opened=opened,
            refusals=tuple(sorted(refusals, key=lambda r: r.at)),
            ghosts_at=end if ghosts_at is None else ghosts_at,
            ghosts=tuple(self.open_at(end if ghosts_at is None else ghosts_at)),
            server_ends=ends,
            points=tuple(points),
            at_peak=tuple(self._open_at_seq(peak_at, peak_seq)),
            ended_by_server=ended_by_server,
        )

    def _open_at_seq(self, t: float, seq: int) -> list[OpenConnection]:
        """The connections open right after the change ``(t, seq)`` (the log's order within a millisecond)."""
        found = [
            OpenConnection(b.pid, b.application_name, b.opened_at, t - b.opened_at, b.closed_at)
            for b in self.backends
            if b.counted
            and (b.opened_at, b.open_seq) <= (t, seq)
            and (b.closed_at is None or (b.closed_at, b.close_seq) > (t, seq))
        ]
        found.sort(key=lambda c: c.opened_at)
        return found

    def forget_before(self, t: float) -> None:
        """Drop what ended before ``t`` (a finished step's backends): windows only move forward."""
        self.backends = [b for b in self.backends if b.closed_at is None or b.closed_at >= t]
        self.refusals = [r for r in self.refusals if r.at >= t]
        self.server_ends = [e for e in self.server_ends if e[0] >= t]
        self.markers = {token: at for token, at in self.markers.items() if at >= t}
