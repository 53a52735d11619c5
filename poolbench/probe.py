"""The probe: one long-lived monitor connection reading pg_stat_activity (an edge: psycopg2).

Opened before any load so it already holds its slot when the workload exhausts the others.
Autocommit, because pg_stat_activity is a snapshot taken once per transaction: inside one
transaction the counts would never change. Only ``client backend`` rows count (background workers
have their own slots) and the monitor excludes itself. A failed read becomes a gap sample and the
next read reconnects: gaps are recorded, never silent. The query is prepared once per monitor
connection: planning it (the view's joins) cost as much server CPU as running it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

import psycopg2

from .sampling import Sample, sample_from_rows

QUERY = """
SELECT state, application_name, count(*)::int,
       max(extract(epoch FROM clock_timestamp() - state_change)) FILTER (WHERE state = 'idle')
  FROM pg_stat_activity
 WHERE backend_type = 'client backend'
   AND pid <> pg_backend_pid()
   AND application_name LIKE %s
 GROUP BY state, application_name
"""
PREPARED = "poolbench_sample"


class Probe:
    def __init__(self, connect: Callable[[], "psycopg2.extensions.connection"], app_prefix: str = ""):
        self._connect = connect
        self._pattern = app_prefix.replace("%", r"\%").replace("_", r"\_") + "%"
        self._conn = None
        self.reconnects = 0
        self.server_started_at = None  # pg_postmaster_start_time(): a change means the server restarted
        self.server_restarts = 0
        self._restart_pending = False

    def open(self) -> None:
        conn = self._connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET application_name = 'poolbench-monitor'")
            cur.execute(f"PREPARE {PREPARED}(text) AS {QUERY.replace('%s', '$1')}")
            cur.execute("SELECT pg_postmaster_start_time()")
            started = cur.fetchone()[0]
        if self.server_started_at is not None and started != self.server_started_at:
            self.server_restarts += 1
            self._restart_pending = True
        self.server_started_at = started
        self._conn = conn

    def read(self, t: float) -> Sample:
        try:
            if self._conn is None or self._conn.closed:
                self.reconnects += 1
                self.open()
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

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg2.Error:
                pass


class SamplerThread(threading.Thread):
    """Reads the probe every ``interval`` seconds on a fixed schedule and hands samples to ``sink``."""

    def __init__(self, probe: Probe, interval: float, sink: Callable[[Sample], None], t0: float):
        super().__init__(daemon=True, name="poolbench-sampler")
        self.probe, self.interval, self.sink, self.t0 = probe, interval, sink, t0
        self.halt = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.halt.is_set():
            self.sink(self.probe.read(time.monotonic() - self.t0))
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (slow read): skip the missed ticks, keep the grid
                next_at = time.monotonic()
                delay = 0
            self.halt.wait(delay)

    def stop(self) -> None:
        self.halt.set()
        self.join(5)
