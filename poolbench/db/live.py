"""Reading the user's own server, live: its connection limits and every client backend (an edge:
psycopg2). Only reads: the one session poolbench opens changes nothing but its own settings.

The session is poolbench's immune one (``db.sessions.admin_session``: autocommit, so each read is a
fresh pg_stat_activity snapshot, and no statement, idle or transaction timeout of the server's ends
it). Its role must see the other sessions' state: a role that is neither a superuser nor a member of
pg_read_all_stats (pg_monitor includes it) sees other roles' backends with NULL state, query and
backend_type, so it could neither tell an idle kept connection from a busy one nor a client backend
from a background worker: ``check_monitor_role`` refuses it, naming the GRANT that fixes it.

The password never travels in the DSN (it would be in the process list): it comes from PGPASSWORD, a
file, or ~/.pgpass, and every error text is scrubbed of it (``scrub``) before anyone sees it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, cast

import psycopg2
import psycopg2.extensions

from ..core.attribution import Backend
from .sessions import admin_session

#: The watching session's application_name: what other tools see of it in pg_stat_activity.
WATCH_NAME = "poolbench-observe"
#: The role pg_stat_activity shows every session's state to (pg_monitor is a member).
READ_ALL_STATS = "pg_read_all_stats"
#: Seconds a connection attempt may take before it counts as unreachable.
CONNECT_TIMEOUT_SECONDS = 10

FACTS = """
SELECT current_setting('server_version_num')::int,
       current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       coalesce(current_setting('reserved_connections', true), '0')::int"""

MONITOR_RIGHTS = """
SELECT current_user,
       (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user),
       pg_catalog.pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER')"""

BACKENDS = """
SELECT pid, usename, coalesce(application_name, ''), datname, host(client_addr), state,
       extract(epoch FROM now - backend_start)::float8,
       extract(epoch FROM now - state_change)::float8
  FROM pg_catalog.pg_stat_activity, (SELECT pg_catalog.clock_timestamp() AS now) AS clock
 WHERE backend_type = 'client backend'
   AND pid <> pg_catalog.pg_backend_pid()
 ORDER BY pid"""


@dataclass(frozen=True)
class ServerFacts:
    """The server's connection limits, as it runs now."""

    server_version_num: int
    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int  # PostgreSQL 16+ setting, 0 before

    def usable_for_normal_role(self) -> int:
        """Slots a role that is neither a superuser nor a member of pg_use_reserved_connections may take."""
        return self.max_connections - self.superuser_reserved_connections - self.reserved_connections

    def to_status(self) -> dict[str, int]:
        return {
            "serverVersionNum": self.server_version_num,
            "maxConnections": self.max_connections,
            "superuserReservedConnections": self.superuser_reserved_connections,
            "reservedConnections": self.reserved_connections,
            "usableForNormalRole": self.usable_for_normal_role(),
        }


def read_server_facts(conn: psycopg2.extensions.connection) -> ServerFacts:
    with conn.cursor() as cur:
        cur.execute(FACTS)
        row = cur.fetchone()
    assert row is not None
    return ServerFacts(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


class MonitorRoleError(Exception):
    """The session's role cannot see other sessions' state; the message names the GRANT to run."""


def quote_identifier(name: str) -> str:
    """A role name as SQL writes it: in double quotes, its own double quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


def check_monitor_role(conn: psycopg2.extensions.connection) -> None:
    """Refuse a role that would see other sessions' state as NULL: neither a superuser nor a member of
    pg_read_all_stats."""
    with conn.cursor() as cur:
        cur.execute(MONITOR_RIGHTS)
        row = cur.fetchone()
    assert row is not None
    role, superuser, reads_all = str(row[0]), bool(row[1]), bool(row[2])
    if not (superuser or reads_all):
        raise MonitorRoleError(
            f'role "{role}" cannot see other sessions\' state (it is not a member of {READ_ALL_STATS});'
            f" as a superuser, run: GRANT pg_monitor TO {quote_identifier(role)};"
        )


def read_backends(conn: psycopg2.extensions.connection) -> list[Backend]:
    """Every client backend but the reading session's own, its ages taken on the server's clock (one
    clock_timestamp() per read)."""
    with conn.cursor() as cur:
        cur.execute(BACKENDS)
        rows = cur.fetchall()
    return [
        Backend(
            pid=int(pid),
            usename=usename,
            application_name=app,
            datname=datname,
            client_addr=addr,
            state=state,
            backend_age_seconds=float(age) if age is not None else 0.0,
            state_age_seconds=None if state_age is None else float(state_age),
        )
        for pid, usename, app, datname, addr, state, age, state_age in rows
    ]


# -- the connection: a DSN without its password ---------------------------------------------------


class DsnError(ValueError):
    """A DSN poolbench will not use: malformed, or carrying a password (it would be in the process list)."""


#: Where a password hides in a DSN's error text: key=value, a URL's user:password@, ?password=.
PASSWORD_IN_TEXT = (
    re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE),
    re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)"),
)


def scrub(text: str, password: str | None = None) -> str:
    """``text`` without the password: every occurrence of it, and whatever a DSN gave as one."""
    if password:
        text = text.replace(password, "***")
    for pattern in PASSWORD_IN_TEXT:
        text = pattern.sub(lambda m: m.group(1) + "***" + (m.group(3) if m.lastindex == 3 else ""), text)
    return text


def check_dsn(dsn: str) -> dict[str, str]:
    """The DSN's parts (libpq's own parser); DsnError for a malformed one or one with a password."""
    try:
        parts: dict[str, str] = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError as err:
        raise DsnError(f"--dsn is not a valid connection string: {scrub(' '.join(str(err).split()))}") from None
    if "password" in parts:
        raise DsnError(
            "--dsn carries a password, which would show in the process list: give it in PGPASSWORD,"
            " --password-file or ~/.pgpass instead"
        )
    return parts


def open_watch(dsn: str, password: str | None = None) -> psycopg2.extensions.connection:
    """The watching session: poolbench's immune one (autocommit, no server timeouts), logged in with
    ``password`` (None: libpq's PGPASSWORD or ~/.pgpass). Errors come out scrubbed of the password."""
    check_dsn(dsn)

    def connect(**extra: Any) -> psycopg2.extensions.connection:
        settings: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS, **extra}
        if password is not None:
            settings["password"] = password
        return cast(psycopg2.extensions.connection, psycopg2.connect(dsn, **settings))

    try:
        return admin_session(connect, WATCH_NAME)
    except psycopg2.Error as err:
        raise type(err)(scrub(" ".join(str(err).split()), password)) from None


# -- the password: never in argv ------------------------------------------------------------------


def read_password(password_file: str | None, environ: dict[str, str]) -> str | None:
    """The password from ``password_file`` (its first line), else PGPASSWORD, else None (libpq then
    reads ~/.pgpass itself). OSError for an unreadable file."""
    if password_file is not None:
        with open(password_file, encoding="utf-8") as fh:
            return fh.readline().rstrip("\r\n")
    return environ.get("PGPASSWORD") or None


def where(parts: dict[str, str]) -> str:
    """'user@host:port/dbname' of a DSN's parts, for headings (never the password: check_dsn refused it)."""
    host = parts.get("host") or parts.get("hostaddr") or "local socket"
    port = f":{parts['port']}" if parts.get("port") else ""
    user = f"{parts['user']}@" if parts.get("user") else ""
    db = f"/{parts['dbname']}" if parts.get("dbname") else ""
    return f"{user}{host}{port}{db}"
