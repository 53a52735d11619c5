"""The pooler probe: PgBouncer's admin console read at the monitor's interval (an edge: psycopg2).

Each instance is read with ``SHOW POOLS`` on its own connection (autocommit: the console takes no
transactions); the instances' reads of one tick are summed. A failed read is a gap and the next
read reconnects. Between steps ``drop_server_connections`` makes every instance close its server
connections (``KILL`` the database, then ``RESUME`` it), so a step starts with none, as it does
without a pooler.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence

import psycopg2
import psycopg2.extensions

from ..core.sampling import PoolerRead, merge_pooler_reads, pooler_read_from_rows

AdminConnect = Callable[[], psycopg2.extensions.connection]


class PoolerProbe:
    """``connects``: one function per pooler instance, each opening an admin-console connection."""

    def __init__(self, connects: Sequence[AdminConnect], database: str):
        self.connects = list(connects)
        self.database = database
        self._conns: list[psycopg2.extensions.connection | None] = [None] * len(self.connects)
        self._lock = threading.Lock()

    def _console(self, i: int) -> psycopg2.extensions.connection:
        conn = self._conns[i]
        if conn is None or conn.closed:
            conn = self.connects[i]()
            conn.autocommit = True
            self._conns[i] = conn
        return conn

    def read_instance(self, i: int) -> PoolerRead:
        """Instance ``i``'s SHOW POOLS for the benchmark's database; a failed read is ``ok=False``."""
        try:
            with self._console(i).cursor() as cur:
                cur.execute("SHOW POOLS")
                columns = [c[0] for c in cur.description or []]
                return pooler_read_from_rows(columns, cur.fetchall(), self.database)
        except Exception as err:  # noqa: BLE001 - a failed read is a gap, never a dead sampler
            self._close(i)
            return PoolerRead(ok=False, error=" ".join(str(err).split())[:200] or type(err).__name__)

    def read(self) -> PoolerRead:
        with self._lock:
            return merge_pooler_reads([self.read_instance(i) for i in range(len(self.connects))])

    def version(self) -> str:
        """The first instance's ``SHOW VERSION`` ("PgBouncer 1.18.0"); empty when it cannot be read."""
        with self._lock:
            try:
                with self._console(0).cursor() as cur:
                    cur.execute("SHOW VERSION")
                    row = cur.fetchone()
                    return str(row[0]) if row else ""
            except Exception:  # noqa: BLE001 - an unknown version only loses a hint in a fix
                self._close(0)
                return ""

    def drop_server_connections(self) -> bool:
        """Every instance closes its server connections (and any client still connected); True when
        every instance did."""
        done = True
        with self._lock:
            for i in range(len(self.connects)):
                try:
                    with self._console(i).cursor() as cur:
                        cur.execute(f"KILL {self.database}")
                        cur.execute(f"RESUME {self.database}")
                except Exception:  # noqa: BLE001 - the loop's clean slate terminates what is left
                    self._close(i)
                    done = False
        return done

    def _close(self, i: int) -> None:
        conn, self._conns[i] = self._conns[i], None
        if conn is not None:
            with contextlib.suppress(psycopg2.Error):
                conn.close()

    def close(self) -> None:
        with self._lock:
            for i in range(len(self._conns)):
                self._close(i)
