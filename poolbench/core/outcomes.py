"""Classify one attempt's outcome from the exception it raised.

psycopg2 raises connection-slot errors at connect time with ``pgcode`` None, so the class comes
from the server's message text (PostgreSQL src/backend/utils/init/postinit.c) or PgBouncer's
(``no more connections allowed (max_client_conn)``, ``query_wait_timeout``). Behind a pooler, a
slot error is the server refusing the *pooler's* login (PgBouncer forwards it to the client that
was waiting for that connection), so it is classed as a pooler server-login failure. Pure: no
imports of drivers, it only reads the exception chain (and ``FULL_MESSAGE``, see below).
"""

from __future__ import annotations

TOO_MANY_CLIENTS = "tooManyClients"
RESERVED_SLOTS = "reservedSlots"
POOL_TIMEOUT = "poolTimeout"
POOLER_MAX_CLIENT_CONN = "poolerMaxClientConn"
POOLER_SERVER_LOGIN = "poolerServerLogin"
POOLER_QUERY_WAIT_TIMEOUT = "poolerQueryWaitTimeout"
#: A driver's server-side prepared statement met a server connection that already has one of that name
#: (SQLSTATE 42P05) or lacks it (26000): behind a transaction-mode pooler, clients share server
#: connections. A driver setting, not a capacity limit.
PREPARED_STATEMENT_CLASH = "preparedStatementClash"
OTHER = "other"
OK = "ok"
#: In order of significance: what ran out first (server slots, then the pooler's) comes first.
OUTCOMES = (
    OK,
    TOO_MANY_CLIENTS,
    RESERVED_SLOTS,
    POOLER_MAX_CLIENT_CONN,
    POOLER_SERVER_LOGIN,
    POOLER_QUERY_WAIT_TIMEOUT,
    POOL_TIMEOUT,
    PREPARED_STATEMENT_CLASH,
    OTHER,
)
#: Classes that say nothing about connection capacity: the driver's configuration, with its fix.
DRIVER_SETTING_FIXES = {
    PREPARED_STATEMENT_CLASH: (
        "the driver's server-side prepared statements clash behind PgBouncer transaction mode (a driver"
        " setting, not pooling): asyncpg needs prepared_statement_cache_size=0 in the URL and connect_args"
        " statement_cache_size=0 with a unique prepared_statement_name_func; psycopg 3 needs"
        " prepare_threshold=None"
    ),
}
#: Attribute the workload sets on a driver exception whose text lost part of the server's message.
#: libpq keeps every message of a failed request in the connection (PQerrorMessage), but when
#: PgBouncer sends "FATAL: query_wait_timeout" and closes, psycopg2 raises with the last part only
#: ("server closed the connection unexpectedly").
FULL_MESSAGE = "poolbench_full_message"

SLOT_ERRORS = {
    "sorry, too many clients already": TOO_MANY_CLIENTS,
    "remaining connection slots are reserved": RESERVED_SLOTS,
}
POOLER_ERRORS = {
    "no more connections allowed (max_client_conn)": POOLER_MAX_CLIENT_CONN,
    "query_wait_timeout": POOLER_QUERY_WAIT_TIMEOUT,
    "server login has been failing": POOLER_SERVER_LOGIN,
    "pgbouncer cannot connect to server": POOLER_SERVER_LOGIN,
}


def classify_message(message: str, *, pooled: bool = False) -> str:
    """The class of one error text; ``pooled``: the client connects through a pooler."""
    text = message.lower()
    for needle, outcome in POOLER_ERRORS.items():
        if needle in text:
            return outcome
    for needle, outcome in SLOT_ERRORS.items():
        if needle in text:
            return POOLER_SERVER_LOGIN if pooled else outcome
    if "queuepool limit of size" in text or "3o7r" in text:
        return POOL_TIMEOUT
    if "prepared statement" in text and ("already exists" in text or "does not exist" in text):
        return PREPARED_STATEMENT_CLASH
    return OTHER


def _texts(node: BaseException) -> str:
    full = getattr(node, FULL_MESSAGE, None)
    return f"{full}\n{node}" if isinstance(full, str) else str(node)


#: SQLSTATE 53300 (too_many_connections) by the drivers' own names for it: asyncpg's
#: TooManyConnectionsError, psycopg 3's errors.TooManyConnections; psycopg2 has ``pgcode`` (None at connect).
SLOT_EXCEPTIONS = ("TooManyConnectionsError", "TooManyConnections")
#: duplicate_prepared_statement and invalid_sql_statement_name ("prepared statement … does not exist").
PREPARED_STATEMENT_SQLSTATES = ("42P05", "26000")


def classify_exception(exc: BaseException, *, pooled: bool = False) -> str:
    """Walk the cause chain (SQLAlchemy wraps the DB-API error, and its asyncpg adapter wraps asyncpg's)
    and classify: by the text first (it tells slots from reserved slots), then by SQLSTATE or type."""
    seen: set[int] = set()
    node: BaseException | None = exc
    slot_error = False
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if getattr(node, "code", None) == "3o7r":
            return POOL_TIMEOUT
        found = classify_message(_texts(node), pooled=pooled)
        if found != OTHER:
            return found
        sqlstate = getattr(node, "sqlstate", None) or getattr(node, "pgcode", None)
        if sqlstate in PREPARED_STATEMENT_SQLSTATES:
            return PREPARED_STATEMENT_CLASH
        slot_error = slot_error or sqlstate == "53300" or type(node).__name__ in SLOT_EXCEPTIONS
        node = node.__cause__ or node.__context__
    if slot_error:
        return POOLER_SERVER_LOGIN if pooled else TOO_MANY_CLIENTS
    return OTHER


def short_message(exc: BaseException, limit: int = 200) -> str:
    """First line of the innermost message: what a person wants to read in a status field."""
    node = exc
    while node.__cause__ is not None:
        node = node.__cause__
    full = getattr(node, FULL_MESSAGE, None)
    text = " ".join((full if isinstance(full, str) else str(node)).split())
    return text[:limit]
