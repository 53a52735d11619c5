"""The monitor: poolbench's one watch over the database and the variant's pooler (an edge: psycopg2).

Both platforms use it the same way: build it with a ``connect`` to the server, ``start`` it before
any load (its session holds its slot first), hand it to the step loop, ``stop`` it on the way out.
It owns the probe (one session reading pg_stat_activity in autocommit, counting only ``client
backend`` rows, immune to the server's timeouts: ``db.probe``, ``db.sessions``), the sampler thread
that reads it on a fixed schedule, the pooler probe of the variant being measured (``db.pooler``),
and what the loop asks of the server between two reads: the backends' ages and the termination of
leftovers. It implements the core's ``steploop.Monitor``.

Given the server's log (``log``: a ``serverlog.LogSource`` the platform follows), it also keeps the
server's exact account of its connections (``core.timeline``): it parses what the log brings at each
of the loop's looks, leaves its own sessions out (their PIDs, from ``pg_backend_pid()``), and at a
step's end writes a marker into the log from its own session and reads until the marker shows, so
the account covers the whole step before it is judged. The log's times are the server's clock: the
offset to the platform's clock is read at the start (one round trip, its middle) and refined by each
marker (the statement's round trip around its logged time), so a server whose clock differs does not
move events across a step's boundaries. When the log cannot be read, or does
not catch up in time, the step keeps its sampled peak and says why.
"""

from __future__ import annotations

import itertools
import os
import queue
import time
from collections.abc import Sequence

from ..core.compat import ClientTarget, ProbeRequest, findings
from ..core.results import Compatibility
from ..core.sampling import Sample
from ..core.serverlog import LogSource, parse_line
from ..core.steploop import PoolerConsole
from ..core.timeline import ServerTimeline, WindowAccount
from ..core.workload_env import DATABASE
from . import compat
from .pooler import PoolerProbe
from .probe import Probe, SamplerThread
from .sessions import Connect

#: How long a step's end waits for the server's log to show the monitor's marker.
LOG_CATCH_UP_SECONDS = 5.0
LOG_POLL_SECONDS = 0.02


class Monitor:
    """``interval``: seconds between two reads; ``t0``: the platform's start (``time.monotonic()``),
    so samples carry the platform's own clock. ``timeline``, when given, receives every read too.
    ``log``: the server's log, for exact peaks (None: the platform cannot read it; sampled peaks)."""

    def __init__(
        self,
        connect: Connect,
        interval: float,
        t0: float,
        timeline: list[Sample] | None = None,
        log: LogSource | None = None,
    ):
        self.connect = connect
        self.probe = Probe(connect)
        self.sampler = SamplerThread(self.probe, interval, None, t0)
        self.pooler: PoolerProbe | None = None
        self.timeline = timeline
        self.t0 = t0
        self.log = log
        self.server = ServerTimeline()
        #: The exact count of open connections over each step (platform clock), for the plot.
        self.server_points: list[tuple[float, int]] = []
        #: Each step's account, in order (the plot marks their refusals).
        self.accounts: list[WindowAccount] = []
        self.clock_offset: float | None = None  # the server's epoch seconds minus the platform's clock
        self.clock_uncertainty = float("inf")  # half the round trip the offset was read in
        self.log_error: str | None = None  # why reading the log failed, when it did
        self.lines_read = 0
        self._markers = itertools.count(1)
        self._marker_prefix = f"p{os.getpid()}t{time.monotonic_ns()}n"

    def start(self) -> None:
        """Open the monitor's session (before any load, so it holds its slot) and start reading."""
        self.probe.open()
        if self.log is not None:
            self.measure_clock()
            self.read_log()
        self.sampler.start()

    # -- the server's log ---------------------------------------------------------------------------
    def measure_clock(self) -> None:
        """The offset from the platform's clock to the server's (epoch seconds)."""
        read = self.probe.server_clock()
        if read is not None:
            local, server, half_trip = read
            self.clock_offset = server - (local - self.t0)
            self.clock_uncertainty = half_trip

    def refine_clock(self, before: float, after: float, server: float) -> None:
        """A statement that ran between ``before`` and ``after`` (monotonic) logged ``server``: a reading
        of the offset, kept when its round trip was shorter than the one in use (a busy machine may
        have slowed the first)."""
        half_trip = (after - before) / 2
        if half_trip < self.clock_uncertainty:
            self.clock_offset = server - ((before + after) / 2 - self.t0)
            self.clock_uncertainty = half_trip

    def read_log(self) -> None:
        """Parse what the log brought since the last look (in the loop's thread, like all the rest)."""
        if self.log is None:
            return
        while True:  # the monitor's sessions first: their lines may be among these
            try:
                pid, started = self.probe.sessions.get_nowait()
            except queue.Empty:
                break
            self.server.exclude(pid, started)
        try:
            lines = self.log.read_lines()
        except Exception as err:  # noqa: BLE001 - a log that fails to read means sampled peaks, said why
            self.log_error = f"reading the server's log failed: {' '.join(str(err).split())[:200]}"
            return
        self.log_error = None
        self.lines_read += len(lines)
        add = self.server.add
        for line in lines:
            event = parse_line(line)
            if event is not None:
                add(event)

    def server_account(self, start: float, end: float, ghosts_at: float | None = None) -> WindowAccount | str:
        """The server's exact account of ``[start, end]`` (platform clock), once the log has been read
        past ``end``; else why there is none."""
        if self.log is None:
            return "this platform does not read the server's log"
        why = self.log.unavailable() or self.log_error
        if why:
            return why
        if self.clock_offset is None:
            self.measure_clock()
            if self.clock_offset is None:
                return "the monitor could not read the server's clock"
        token = f"{self._marker_prefix}{next(self._markers)}"
        before = time.monotonic()
        marked = self.probe.log_marker(token)
        after = time.monotonic()
        if not marked:
            return "the monitor's session was down at the step's end: it could not mark the server's log"
        deadline = time.monotonic() + LOG_CATCH_UP_SECONDS
        while True:
            self.read_log()
            if token in self.server.markers:
                break
            why = self.log.unavailable() or self.log_error
            if why:
                return why
            if time.monotonic() > deadline:
                return (
                    f"the server's log did not show the monitor's marker within {LOG_CATCH_UP_SECONDS:g} s"
                    " (it lags, or the server does not log what poolbench needs)"
                )
            time.sleep(LOG_POLL_SECONDS)
        self.refine_clock(before, after, self.server.markers[token])
        offset = self.clock_offset
        window = self.server.window(start + offset, end + offset, None if ghosts_at is None else ghosts_at + offset)
        self.server.forget_before(end + offset)
        account = window.shifted(offset)
        self.server_points.extend(account.points)
        self.accounts.append(account)
        return account

    def stop(self) -> None:
        """Stop reading and close every session; the reads not yet taken go to the timeline."""
        if self.sampler.ident is not None:
            self.sampler.stop()
        self.keep(self.sampler.take())
        self.watch_pooler(())
        self.probe.close()
        if self.log is not None:
            self.log.close()

    def keep(self, samples: list[Sample]) -> list[Sample]:
        if self.timeline is not None:
            self.timeline.extend(samples)
        return samples

    # -- the step loop's Monitor ------------------------------------------------------------------
    def samples(self) -> list[Sample]:
        self.read_log()
        return self.keep(self.sampler.take())

    def watch_pooler(self, consoles: Sequence[PoolerConsole]) -> None:
        self.pooler = PoolerProbe(consoles, DATABASE) if consoles else None
        self.sampler.use_pooler(self.pooler)  # closes the previous one

    def drop_pooler_connections(self) -> None:
        if self.pooler is not None:
            self.pooler.drop_server_connections()

    def probe_compatibility(self, target: ClientTarget, request: ProbeRequest) -> Compatibility:
        version = self.pooler.version() if self.pooler is not None else ""
        try:
            trace = compat.probe(target, request, self.connect, self.drop_pooler_connections, version)
        except Exception as err:  # noqa: BLE001 - the probe is advice: the load runs whatever happened to it
            why = " ".join(str(err).split())[:300] or type(err).__name__
            self.drop_pooler_connections()
            return Compatibility(pool_mode=request.pool_mode, notes=[f"the compatibility probe could not run: {why}"])
        return findings(trace)

    def connection_ages(self) -> list[float]:
        return self.probe.connection_ages()

    def terminate_backends(self) -> int:
        return self.probe.terminate_others()
