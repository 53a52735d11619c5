"""The probe: one long-lived monitor connection reading pg_stat_activity (an edge: psycopg2).

Opened before any load so it already holds its slot when the workload exhausts the others.
Autocommit, because pg_stat_activity is a snapshot taken once per transaction: inside one
transaction the counts would never change. Only ``client backend`` rows count (background workers
have their own slots); the monitor excludes itself by pid and poolbench's own sessions by name
(``serverlog.OWN_SESSION_NAMES``: a readiness check after a restart, the role setup), exactly the set
the server's log account leaves out. The benchmark's database is its own, so every other client
backend is the workload's, however it names itself (a statement may change its own
``application_name``: one that takes a name of poolbench's is read as poolbench's, so the reads show
less than the log, never more); per-replica peaks use the name where it is still set. A backend
counts once its session is established (``state`` is set and no longer ``starting``, as PostgreSQL
17 shows a backend during authentication): one still authenticating, or about to be refused for
want of a slot, holds no connection of the workload's. The monitor's
session turns off every timeout the server may impose (``db.sessions``), so no setting of the
user's can blind or kill it. A failed read becomes a gap sample and the next read reconnects: gaps
are recorded, never silent. The query is prepared once per monitor connection: planning it (the
view's joins) cost as much server CPU as running it. It reads ``pg_stat_get_activity(NULL)``, the
function under the ``pg_stat_activity`` view, itself: the same rows, the columns by the same names, no
view to expand. That function's cost grows faster than the backends (each row's process is found by
a scan of the process array), so at thousands of backends a read takes tens of milliseconds whatever
the query around it; the query adds as little as it can: one clock reading per read for the idle
ages, not one per row.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import psycopg2
import psycopg2.extensions

from ..core.sampling import Sample, sample_from_rows
from ..core.serverlog import MARKER_TEXT, MONITOR_NAME, OWN_SESSION_NAMES
from .pooler import PoolerProbe
from .sessions import Connect, admin_session

#: poolbench's own sessions, left out by name as the server's log account leaves them out.
OWN_NAMES = ", ".join(f"'{name}'" for name in sorted(OWN_SESSION_NAMES))
OTHER_CLIENTS = f"""
  FROM pg_catalog.pg_stat_get_activity(NULL)
 WHERE backend_type = 'client backend'
   AND pid <> pg_catalog.pg_backend_pid()
   AND coalesce(application_name, '') NOT IN ({OWN_NAMES})"""
#: The backends that count: established sessions (see the module's docstring), named as asked.
COUNTED = (
    OTHER_CLIENTS
    + """
   AND state IS NOT NULL AND state <> 'starting'
   AND application_name LIKE %s"""
)
QUERY = (
    """
SELECT state, application_name, count(*)::int,
       extract(epoch FROM clock_timestamp() - min(state_change) FILTER (WHERE state = 'idle')),
       wait_event_type"""
    + COUNTED
    + """
 GROUP BY state, application_name, wait_event_type
"""
)
PREPARED = "poolbench_sample"
AGES = "SELECT extract(epoch FROM clock_timestamp() - backend_start)::float8" + COUNTED
#: The server's start (a change is a restart), and the monitor session's own PID and start.
OWN_SESSION = """
SELECT pg_catalog.pg_postmaster_start_time(), pg_catalog.pg_backend_pid(),
       (SELECT extract(epoch FROM backend_start)::float8
          FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()))"""
#: The server's clock, read in one round trip.
SERVER_CLOCK = "SELECT extract(epoch FROM pg_catalog.clock_timestamp())::float8"
#: Leftovers are every other client backend, starting ones included.
TERMINATE = "SELECT count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(pid))::int" + OTHER_CLIENTS


class Probe:
    """``app_prefix`` narrows the count to connections whose application_name starts with it (the
    probe-fidelity benchmarks use it); the benchmark itself counts every client backend."""

    def __init__(self, connect: Connect, app_prefix: str = ""):
        self._connect = connect
        self._lock = threading.Lock()  # the sampler reads while the step loop may terminate
        self._pattern = app_prefix.replace("%", r"\%").replace("_", r"\_") + "%"
        self._conn: psycopg2.extensions.connection | None = None
        self.reconnects = 0
        self.server_started_at: datetime | None = None  # pg_postmaster_start_time(): a change = a restart
        self.server_restarts = 0
        self._restart_pending = False
        #: Each session the probe opened: (its PID, its backend_start as epoch seconds), for the
        #: server-log reader to leave the monitor's own backends out. Appended by the sampler thread.
        self.sessions: queue.SimpleQueue[tuple[int, float | None]] = queue.SimpleQueue()

    def open(self) -> None:
        conn = admin_session(self._connect, MONITOR_NAME)
        with conn.cursor() as cur:
            cur.execute(f"PREPARE {PREPARED}(text) AS {QUERY.replace('%s', '$1')}")
            cur.execute(OWN_SESSION)
            row = cur.fetchone()
            started = row[0] if row else None
            if row is not None:
                self.sessions.put((int(row[1]), None if row[2] is None else float(row[2])))
        if self.server_started_at is not None and started != self.server_started_at:
            self.server_restarts += 1
            self._restart_pending = True
        self.server_started_at = started
        self._conn = conn

    def backend_pid(self) -> int | None:
        """The monitor session's server process (its cost is measured per process), None before open()."""
        return None if self._conn is None else self._conn.get_backend_pid()

    def read(self, t: float) -> Sample:
        try:
            with self._lock:
                if self._conn is None or self._conn.closed:
                    self.reconnects += 1
                    self.open()
                assert self._conn is not None
                with self._conn.cursor() as cur:
                    cur.execute(f"EXECUTE {PREPARED}(%s)", (self._pattern,))
                    rows = cur.fetchall()
            sample = sample_from_rows(t, rows)
            if self._restart_pending:
                self._restart_pending = False
                sample = replace(sample, server_restarted=True)
            return sample
        except Exception as err:  # noqa: BLE001 - any failed read or reconnect is a gap, never a dead sampler
            self.close()
            return Sample.gap(t, " ".join(str(err).split())[:200] or type(err).__name__)

    def _on_monitor(
        self, sql: str, params: tuple[str, ...] = (), *, fetch: bool = True
    ) -> list[tuple[Any, ...]] | None:
        """Run one statement in the monitor's own session (it keeps its slot when the others are
        full), between two reads; None when the monitor is down."""
        try:
            with self._lock:
                if self._conn is None or self._conn.closed:
                    return None
                with self._conn.cursor() as cur:
                    cur.execute(sql, params)
                    return cur.fetchall() if fetch else []
        except psycopg2.Error:
            return None

    def connection_ages(self) -> list[float]:
        """Seconds since each counted backend started (backend_start); [] when the monitor is down."""
        rows = self._on_monitor(AGES, (self._pattern,))
        return [float(age) for (age,) in rows or []]

    def server_clock(self, tries: int = 5) -> tuple[float, float, float] | None:
        """(local ``time.monotonic()``, the server's epoch seconds, half the round trip) at one moment: the
        read with the shortest round trip, its server time taken as at the trip's middle. None when the
        monitor is down."""
        best: tuple[float, float, float] | None = None
        for _ in range(tries):
            before = time.monotonic()
            rows = self._on_monitor(SERVER_CLOCK)
            after = time.monotonic()
            if not rows:
                return None
            if best is None or after - before < best[0]:
                best = (after - before, (before + after) / 2, float(rows[0][0]))
        return None if best is None else (best[1], best[2], best[0] / 2)

    def log_marker(self, token: str) -> bool:
        """Write ``serverlog.MARKER_TEXT`` + ``token`` to the server's log from the monitor's session
        (``token`` is poolbench's own: letters and digits). False when the monitor is down."""
        assert token.isalnum()
        return self._on_monitor(f"DO $$ BEGIN RAISE LOG '{MARKER_TEXT}{token}'; END $$", fetch=False) is not None

    def terminate_others(self) -> int:
        """End every client backend but the monitor; how many were ended. 0 when the monitor is down."""
        rows = self._on_monitor(TERMINATE)
        return int(rows[0][0]) if rows else 0

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg2.Error):
                conn.close()


class SamplerThread(threading.Thread):
    """Reads the probe every ``interval`` seconds on a fixed schedule and hands samples to ``sink``;
    without a sink they wait in a queue for ``take()`` (what the monitor uses: the step loop stays
    in one thread and never shares state with this one)."""

    def __init__(self, probe: Probe, interval: float, sink: Callable[[Sample], None] | None, t0: float):
        super().__init__(daemon=True, name="poolbench-sampler")
        self.queue: queue.SimpleQueue[Sample] = queue.SimpleQueue()
        self.probe, self.interval, self.t0 = probe, interval, t0
        self.sink = sink or self.queue.put
        self.halt = threading.Event()
        #: Read at each tick after the server, while a pooled variant runs (``use_pooler``).
        self.pooler: PoolerProbe | None = None

    def use_pooler(self, pooler: PoolerProbe | None) -> None:
        """Read ``pooler`` at each tick from now on (None: no pooler); the previous one is closed."""
        previous, self.pooler = self.pooler, pooler
        if previous is not None and previous is not pooler:
            previous.close()

    def take(self) -> list[Sample]:
        """The samples read since the last call, oldest first."""
        out = []
        while True:
            try:
                out.append(self.queue.get_nowait())
            except queue.Empty:
                return out

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.halt.is_set():
            sample = self.probe.read(time.monotonic() - self.t0)
            pooler = self.pooler
            if pooler is not None:
                sample = replace(sample, pooler=pooler.read())
            self.sink(sample)
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (slow read): skip the missed ticks, keep the grid
                next_at = time.monotonic()
                delay = 0
            self.halt.wait(delay)

    def stop(self) -> None:
        self.halt.set()
        self.join(5)
