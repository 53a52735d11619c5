"""A replica's client witness: its pool's real DB-API connections, counted from SQLAlchemy's pool events.

Which events mean a real connect or close (checked against PostgreSQL in tests/test_client_timeline_db.py):

- ``connect``: a DB-API connection was made (first use, an overflow, NullPool at every checkout, a
  reconnect after an invalidation or a recycle). A connect the server refuses raises in the driver and
  fires nothing.
- ``close``: a pooled connection is closed: QueuePool's overflow at checkin, NullPool at every checkin,
  ``dispose``, a recycle, and a hard invalidation (a failed ``pool_pre_ping``, a connection the server
  ended): ``invalidate`` fires first, then ``close`` for the same connection, so only ``close`` counts.
- ``close_detached``: a connection detached from its pool is closed.
- A connection whose own connect events failed (the dialect's first queries) is closed by the pool with
  no event: the dialect's ``do_terminate`` / ``do_close`` catches it, counted once because a
  connection is only counted closed while it is counted open.

Each change is one point (epoch microseconds, the count from then on) under one lock, on the caller's
thread: a lock, a counter and two array appends, once per real connect or close, never per statement.
"""

from __future__ import annotations

import threading
import time
from array import array
from typing import Any

from sqlalchemy import event

from poolbench.core.client_timeline import OpenTimeline


class ConnectionCounter:
    """Counts one engine's real connections; ``timeline()`` is what the summary reports."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open_ids: dict[int, int] = {}  # id of each DB-API connection counted open → how many times
        self.open = 0
        self.max_open = 0
        self.connects = 0
        self.closes = 0
        self.times_us = array("q")
        self.counts = array("q")

    def attach(self, sync_engine: Any) -> ConnectionCounter:
        """Listens on the engine's pools (the one it has and those ``dispose`` makes) and its dialect."""
        event.listen(sync_engine, "connect", self.opened, insert=True)  # before a dialect's listener can fail
        event.listen(sync_engine, "close", self.closed)
        event.listen(sync_engine, "close_detached", self.closed)
        dialect = sync_engine.dialect
        for name in ("do_terminate", "do_close"):
            setattr(dialect, name, self._closing(getattr(dialect, name)))
        return self

    def _closing(self, close: Any) -> Any:
        def closing(dbapi_connection: Any) -> None:
            self.closed(dbapi_connection)  # counted only when no close event came first
            close(dbapi_connection)

        return closing

    def _record(self, count: int) -> None:
        """Under the lock: the count changed now."""
        now = time.time_ns() // 1000
        if self.times_us and now <= self.times_us[-1]:
            now = self.times_us[-1] + 1  # one point per change, in the order they happened
        self.open = count
        self.max_open = max(self.max_open, count)
        self.times_us.append(now)
        self.counts.append(count)

    def opened(self, dbapi_connection: Any, *_args: Any) -> None:
        key = id(dbapi_connection)
        with self.lock:
            self.open_ids[key] = self.open_ids.get(key, 0) + 1
            self.connects += 1
            self._record(self.open + 1)

    def closed(self, dbapi_connection: Any, *_args: Any) -> None:
        key = id(dbapi_connection)
        with self.lock:
            held = self.open_ids.pop(key, 0)
            if not held:
                return
            if held > 1:
                self.open_ids[key] = held - 1
            self.closes += 1
            self._record(self.open - 1)

    def exiting(self) -> None:
        """The process is about to exit without closing its pool (a crash): the system closes every
        connection with it, so they are counted closed now."""
        with self.lock:
            if self.open:
                self.closes += self.open
                self.open_ids.clear()
                self._record(0)

    def timeline(self, points: bool = True) -> OpenTimeline:
        """What was counted so far; ``points=False``: the maximum and totals only (cheap, for frequent reports)."""
        with self.lock:
            if not points:
                return OpenTimeline((), (), self.max_open, self.connects, self.closes, None)
            return OpenTimeline(tuple(self.times_us), tuple(self.counts), self.max_open, self.connects, self.closes, 0)
