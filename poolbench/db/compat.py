"""The compatibility probe's reads (an edge: psycopg2, and SQLAlchemy for the app's own driver).

Runs the steps of ``poolbench.core.compat`` through the variant's pooler: three plain psycopg2 clients
(psycopg2 never prepares, so they add no state of their own) take turns so that, in transaction mode,
they share server connections, and each reads its own session inside a transaction (``SNAPSHOT``).
``pg_locks`` is read directly on the server, in poolbench's own session. Then two clients of the app's
driver take turns (``driver_run``). At the end the pooler drops its server connections and the probe
waits until the server shows none of the backends it used: whatever the app's statements left in them
(settings, locks, prepared statements, temporary tables) goes with them. A watchdog cancels the
clients' statements if one blocks (a lock the app's statement waits for), so the probe always ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import psycopg2
import psycopg2.extensions

from ..core.compat import ClientTarget, DriverRun, LockHolder, ProbeError, ProbeRequest, ProbeTrace, SessionState
from ..core.contracts.drivers import ASYNC_DRIVER, SQLALCHEMY_URLS
from ..core.serverlog import ADMIN_NAME
from .sessions import Connect, admin_session

#: One client's session, read inside its transaction; advisory lock keys as pg_advisory_lock takes them.
SNAPSHOT = (
    """
SELECT pg_catalog.pg_backend_pid(),
  coalesce((SELECT pg_catalog.json_object_agg(name, pg_catalog.current_setting(name))
              FROM pg_catalog.pg_settings WHERE source = 'session'), '{}'),
  coalesce((SELECT pg_catalog.json_agg(name) FROM pg_catalog.pg_prepared_statements), '[]'),
  coalesce((SELECT pg_catalog.json_agg(c) FROM pg_catalog.pg_listening_channels() c), '[]'),
  coalesce((SELECT pg_catalog.json_agg(relname) FROM pg_catalog.pg_class
             WHERE relnamespace = pg_catalog.pg_my_temp_schema() AND relkind IN ('r', 'p')), '[]'),
  coalesce((SELECT pg_catalog.json_agg(name) FROM pg_catalog.pg_cursors WHERE is_holdable), '[]'),
  coalesce((SELECT pg_catalog.json_agg("""
    + (
        "CASE WHEN objsubid = 1 THEN ((classid::bigint << 32) | objid::bigint)::text"
        " ELSE classid::text || ', ' || objid::text END)"
    )
    + """
              FROM pg_catalog.pg_locks
             WHERE locktype = 'advisory' AND granted AND pid = pg_catalog.pg_backend_pid()), '[]')
"""
)
LOCK_HOLDERS = """
SELECT CASE WHEN l.objsubid = 1 THEN ((l.classid::bigint << 32) | l.objid::bigint)::text
            ELSE l.classid::text || ', ' || l.objid::text END,
       l.pid, coalesce(a.application_name, ''), coalesce(a.state, '')
  FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.pid = ANY(%s)
"""
CLIENT_NAMES = {client: f"poolbench-compat-{client.lower()}" for client in "ABC"}
#: The longest the probe lets the clients' statements run before cancelling them (a blocked statement).
WATCHDOG_SECONDS = 10.0
#: How long the server may take to end the backends the pooler closed.
GONE_SECONDS = 5.0
#: Statements each driver client runs: beyond psycopg 3's prepare_threshold (5), so it prepares.
DRIVER_ROUNDS = 7
DRIVER_STATEMENT = "SELECT pg_catalog.pg_backend_pid()"


def client_connect(target: ClientTarget, name: str) -> psycopg2.extensions.connection:
    conn: psycopg2.extensions.connection = psycopg2.connect(
        host=target.host,
        port=target.port,
        user=target.user,
        password=target.password,
        dbname=target.dbname,
        application_name=name,
        connect_timeout=5,
    )
    return conn


def snapshot(cur: Any) -> SessionState:
    cur.execute(SNAPSHOT)
    pid, settings, prepared, channels, temp_tables, cursors, locks = cur.fetchone()
    return SessionState(
        pid=pid,
        settings={str(k): str(v) for k, v in settings.items()},
        prepared=frozenset(prepared),
        channels=frozenset(channels),
        temp_tables=frozenset(temp_tables),
        hold_cursors=frozenset(cursors),
        advisory_locks=frozenset(locks),
    )


def error_of(client: str, statement: str, err: BaseException) -> ProbeError:
    return ProbeError(client, statement, sqlstate_of(err) or "", " ".join(str(err).split())[:300])


def sqlstate_of(err: BaseException | None) -> str | None:
    """The SQLSTATE under a driver's (or SQLAlchemy's) exception: psycopg2's pgcode, psycopg's and
    asyncpg's sqlstate, through SQLAlchemy's ``orig`` and the exceptions' causes."""
    seen = 0
    while err is not None and seen < 10:
        for attribute in ("pgcode", "sqlstate"):
            value = getattr(err, attribute, None)
            if isinstance(value, str) and value:
                return value
        err = getattr(err, "orig", None) or err.__cause__ or err.__context__
        seen += 1
    return None


class Watchdog:
    """Cancels the clients' running statements once ``seconds`` have passed (PgBouncer forwards the cancel)."""

    def __init__(self, seconds: float):
        self.conns: list[psycopg2.extensions.connection] = []
        self.timer = threading.Timer(seconds, self.cancel)
        self.timer.daemon = True
        self.fired = False

    def cancel(self) -> None:
        self.fired = True
        for conn in list(self.conns):
            with contextlib.suppress(psycopg2.Error):
                conn.cancel()

    def watch(self, conn: psycopg2.extensions.connection) -> psycopg2.extensions.connection:
        self.conns.append(conn)
        return conn

    def __enter__(self) -> Watchdog:
        self.timer.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.timer.cancel()


def run_statements(conn: Any, client: str, statements: tuple[str, ...], errors: list[ProbeError]) -> None:
    """The app's statements on ``conn``, in order; one that fails is recorded and the rest still run (in a
    transaction, each behind a savepoint, so a failed one undoes only itself)."""
    in_transaction = not conn.autocommit
    with conn.cursor() as cur:
        for statement in statements:
            try:
                if in_transaction:
                    cur.execute("SAVEPOINT poolbench_probe")
                cur.execute(statement)
                if in_transaction:
                    cur.execute("RELEASE SAVEPOINT poolbench_probe")
            except psycopg2.Error as err:
                errors.append(error_of(client, statement, err))
                if in_transaction:
                    cur.execute("ROLLBACK TO SAVEPOINT poolbench_probe")


LockReader = Callable[[list[int]], tuple[LockHolder, ...]]


def interleave(
    target: ClientTarget, request: ProbeRequest, watchdog: Watchdog, lock_holders: LockReader
) -> tuple[ProbeTrace, list[int]]:
    """The three clients' turns (``poolbench.core.compat``'s steps 1 to 4); the trace and every backend
    the clients used."""
    errors: list[ProbeError] = []
    notes: list[str] = []
    a = watchdog.watch(client_connect(target, CLIENT_NAMES["A"]))
    try:
        b = watchdog.watch(client_connect(target, CLIENT_NAMES["B"]))
    except psycopg2.Error:
        a.close()
        raise
    try:
        a.autocommit = True
        with a.cursor() as cur:
            fresh = snapshot(cur)
        run_statements(a, "A", request.on_connect, errors)  # each on its own, as a driver's connect hook runs them
        with a.cursor() as cur:
            connected = snapshot(cur)
        a.autocommit = False
        with b.cursor() as cur:
            other_first = snapshot(cur)  # b's transaction is open from here: its server connection stays taken
        # Session mode: each client holds a server connection of its own for its life; transaction mode with
        # one server connection: a client waiting for b's would wait for ever. b lets go first then.
        hold_b = request.pool_mode == "transaction" and request.pool_size >= 2
        if not hold_b:
            b.rollback()
            b.close()
            if request.pool_mode == "transaction":
                notes.append(
                    "the pool has one server connection: a client never changes server connection between its"
                    " transactions here, so nothing can be lost; what leaks was checked"
                )
        own_next = own_done = None
        try:
            with a.cursor() as cur:
                own_next = snapshot(cur)
            run_statements(a, "A", request.transaction, errors)
            with a.cursor() as cur:
                own_done = snapshot(cur)
            a.commit()
        except psycopg2.Error as err:
            errors.append(error_of("A", "", err))
            with contextlib.suppress(psycopg2.Error):
                a.rollback()
        other_after = None
        c = watchdog.watch(client_connect(target, CLIENT_NAMES["C"]))
        try:
            with c.cursor() as cur:
                other_after = snapshot(cur)
            c.rollback()
        finally:
            c.close()
        pids = sorted(
            {s.pid for s in (fresh, connected, other_first, own_next, own_done, other_after) if s is not None}
        )
        holders = lock_holders(pids)  # before any client leaves: session mode releases a leaving client's locks
        if hold_b:
            b.rollback()
        trace = ProbeTrace(
            pool_mode=request.pool_mode,
            on_connect=request.on_connect,
            transaction=request.transaction,
            fresh=fresh,
            connected=connected,
            other_first=other_first,
            own_next=own_next,
            own_done=own_done if own_done is not None and own_next is not None else None,
            other_after=other_after,
            errors=tuple(errors),
            notes=tuple(notes),
            lock_holders=holders,
        )
        return trace, pids
    finally:
        for conn in (a, b):
            with contextlib.suppress(psycopg2.Error):
                conn.close()


def unique_statement_name() -> str:
    """asyncpg's prepared statements under names no other client of a shared server connection has."""
    import uuid

    return f"__asyncpg_{uuid.uuid4()}__"


def driver_engine_arguments(driver: str, pooling: bool) -> tuple[dict[str, str], dict[str, Any]]:
    """(URL query, connect_args) as the workload's replica configures ``driver``
    (``workload.replica.driver_settings``)."""
    if not pooling:
        return {}, {}
    if driver == ASYNC_DRIVER:
        return {"prepared_statement_cache_size": "0"}, {
            "statement_cache_size": 0,
            "prepared_statement_name_func": unique_statement_name,
        }
    if driver == "psycopg":
        return {}, {"prepare_threshold": None}
    return {}, {}


def driver_run(target: ClientTarget, request: ProbeRequest) -> tuple[DriverRun | None, str]:
    """Two clients of the app's driver, through SQLAlchemy as the replica builds its engine, take turns
    running one statement ``DRIVER_ROUNDS`` times each; psycopg2 (which never prepares) is not run. Returns
    the run, or None and why it could not run."""
    if request.driver not in ("psycopg", ASYNC_DRIVER):
        return None, ""
    try:
        from sqlalchemy import URL
    except ImportError as err:  # pragma: no cover - SQLAlchemy comes with the drivers extra
        return None, f"the {request.driver} driver's prepared statements were not probed: {err}"
    pooling = request.pool_mode == "transaction" and request.driver_options == "pooling"
    query, connect_args = driver_engine_arguments(request.driver, pooling)
    url = URL.create(
        SQLALCHEMY_URLS[request.driver].removesuffix("://"),
        username=target.user,
        password=target.password,
        host=target.host,
        port=target.port,
        database=target.dbname,
        query=query,
    )
    errors: list[ProbeError] = []
    pids: list[int] = []
    # Then client A runs once more while another client's transaction holds the server connection they
    # shared (transaction mode, two server connections or more): A's statement lands on another one.
    holder = functools.partial(hold_a_server_connection, target) if request.pool_mode == "transaction" else None
    holder = holder if request.pool_size >= 2 else None
    try:
        if request.driver == ASYNC_DRIVER:
            asyncio.run(async_turns(url, connect_args, errors, pids, holder))
        else:
            sync_turns(url, connect_args, errors, pids, holder)
    except Exception as err:  # noqa: BLE001 - a driver missing here (the operator's image) is a note, not a failed run
        why = " ".join(str(err).split())[:200] or type(err).__name__
        return None, f"the {request.driver} driver's prepared statements were not probed here: {why}"
    return DriverRun(
        driver=request.driver,
        options=request.driver_options,
        pooling_applied=pooling,
        statements=DRIVER_ROUNDS,
        pids=tuple(pids),
        errors=tuple(errors),
    ), ""


@contextlib.contextmanager
def hold_a_server_connection(target: ClientTarget) -> Iterator[None]:
    """A plain client's open transaction: its server connection is taken while the block runs."""
    conn = client_connect(target, CLIENT_NAMES["B"])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        yield
    finally:
        conn.close()


Holder = Callable[[], contextlib.AbstractContextManager[None]] | None


def sync_turns(
    url: Any, connect_args: dict[str, Any], errors: list[ProbeError], pids: list[int], holder: Holder
) -> None:
    from sqlalchemy import create_engine

    engines = {
        client: create_engine(
            url,
            pool_size=1,
            max_overflow=0,
            connect_args={**connect_args, "application_name": CLIENT_NAMES[client]},
            execution_options={"no_parameters": True},
        )
        for client in "AB"
    }

    def turn(client: str) -> None:
        """One transaction of ``client``: the backend it ran on, or the error it met (evidence either way)."""
        try:
            with engines[client].begin() as conn:
                pids.append(int(conn.exec_driver_sql(DRIVER_STATEMENT).scalar_one()))
        except Exception as err:  # noqa: BLE001 - every failure is evidence, whatever the driver raises
            errors.append(error_of(client, DRIVER_STATEMENT, err))

    try:
        for _ in range(DRIVER_ROUNDS):
            for client in engines:
                turn(client)
        if holder is not None:
            with holder():
                turn("A")
    finally:
        for engine in engines.values():
            engine.dispose()


async def async_turns(
    url: Any, connect_args: dict[str, Any], errors: list[ProbeError], pids: list[int], holder: Holder
) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engines = {
        client: create_async_engine(
            url,
            pool_size=1,
            max_overflow=0,
            connect_args={**connect_args, "server_settings": {"application_name": CLIENT_NAMES[client]}},
            execution_options={"no_parameters": True},
        )
        for client in "AB"
    }

    async def turn(client: str) -> None:
        """As ``sync_turns``' ``turn``, awaited."""
        try:
            async with engines[client].begin() as conn:
                result = await conn.exec_driver_sql(DRIVER_STATEMENT)
                pids.append(int(result.scalar_one()))
        except Exception as err:  # noqa: BLE001 - every failure is evidence, whatever the driver raises
            errors.append(error_of(client, DRIVER_STATEMENT, err))

    try:
        for _ in range(DRIVER_ROUNDS):
            for client in engines:
                await turn(client)
        if holder is not None:
            with holder():
                await turn("A")
    finally:
        for engine in engines.values():
            await engine.dispose()


def read_lock_holders(direct: psycopg2.extensions.connection) -> LockReader:
    def read(pids: list[int]) -> tuple[LockHolder, ...]:
        with direct.cursor() as cur:
            cur.execute(LOCK_HOLDERS, (pids,))
            return tuple(LockHolder(str(key), int(pid), name, state) for key, pid, name, state in cur.fetchall())

    return read


def wait_gone(direct: psycopg2.extensions.connection, pids: list[int]) -> list[int]:
    """Wait until the server shows none of ``pids``; those still there are terminated and returned."""
    deadline = time.monotonic() + GONE_SECONDS
    while True:
        with direct.cursor() as cur:
            cur.execute("SELECT pid FROM pg_catalog.pg_stat_activity WHERE pid = ANY(%s)", (pids,))
            left = [int(row[0]) for row in cur.fetchall()]
        if not left:
            return []
        if time.monotonic() > deadline:
            with direct.cursor() as cur:
                cur.execute("SELECT pg_catalog.pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (left,))
            return left
        time.sleep(0.02)


@contextlib.contextmanager
def direct_session(connect: Connect) -> Iterator[psycopg2.extensions.connection]:
    conn = admin_session(connect, ADMIN_NAME)  # poolbench's own: no count of the workload's includes it
    try:
        yield conn
    finally:
        conn.close()


def probe(
    target: ClientTarget,
    request: ProbeRequest,
    connect: Connect,
    drop_server_connections: Callable[[], object],
    pooler_version: str = "",
) -> ProbeTrace:
    """The whole probe: the clients' turns, the driver's, then every server connection the pooler holds
    dropped and waited for. What could not run is a note in the trace, never an exception (the load
    still runs)."""
    notes: list[str] = []
    if request.pool_mode == "session" and request.pool_size < 2:
        why = "a session-mode pool of one server connection serves one client at a time: no client shares one"
        return failed_trace(request, why)
    with direct_session(connect) as direct:
        try:
            with Watchdog(WATCHDOG_SECONDS) as watchdog:
                trace, pids = interleave(target, request, watchdog, read_lock_holders(direct))
            if watchdog.fired:
                notes.append(f"a statement ran longer than {WATCHDOG_SECONDS:g} s and was cancelled")
        except psycopg2.Error as err:
            trace, pids = (
                failed_trace(request, f"the probe's clients could not run: {' '.join(str(err).split())[:300]}"),
                [],
            )
        run, why = driver_run(target, request)
        if why:
            notes.append(why)
        if run is not None:
            pids = sorted(set(pids) | set(run.pids))
        drop_server_connections()
        left = wait_gone(direct, pids) if pids else []
        if left:
            notes.append(f"backends {', '.join(map(str, left))} outlived the pooler's connections and were terminated")
    return replace(trace, driver=run, pooler_version=pooler_version, notes=trace.notes + tuple(notes))


def failed_trace(request: ProbeRequest, why: str) -> ProbeTrace:
    nothing = SessionState(pid=0)
    return ProbeTrace(
        pool_mode=request.pool_mode,
        on_connect=request.on_connect,
        transaction=request.transaction,
        fresh=nothing,
        connected=nothing,
        other_first=nothing,
        own_next=None,
        own_done=None,
        other_after=None,
        notes=(why,),
    )
