"""poolbench's own sessions (the monitor, the app-role setup): immune to the server's settings. Their
names (``serverlog.OWN_SESSION_NAMES``) keep them out of every count of the workload's connections.

A user may give the server any setting (``spec.postgres.settings``), and the server applies it to
every session: a short ``statement_timeout`` would cancel the monitor's reads, an
``idle_session_timeout`` shorter than the sampling interval would end the monitor between reads, a
read-only default would refuse ``CREATE ROLE``, an odd ``search_path`` could shadow catalog views.
Our sessions override each of these for themselves, at connect time, before they run anything.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg2
import psycopg2.extensions

Connect = Callable[..., psycopg2.extensions.connection]  # called with libpq keyword arguments

#: Applied by the server before the session runs anything (libpq ``options``). The last two exist
#: only in newer servers (14+, 17+); an older server refuses the connection naming the one it does
#: not know, and the session is opened again without it.
SESSION_SETTINGS = {
    "statement_timeout": "0",
    "lock_timeout": "0",
    "idle_in_transaction_session_timeout": "0",
    "default_transaction_read_only": "off",
    "search_path": "pg_catalog",
    "idle_session_timeout": "0",
    "transaction_timeout": "0",
}
NEWER_SETTINGS = ("transaction_timeout", "idle_session_timeout")


def connect_options(settings: dict[str, str]) -> str:
    return " ".join(f"-c {name}={value}" for name, value in settings.items())


def admin_session(connect: Connect, name: str) -> psycopg2.extensions.connection:
    """A connection for poolbench's own work, in autocommit, immune to the server's timeouts."""
    settings = dict(SESSION_SETTINGS)
    while True:
        try:
            conn = connect(options=connect_options(settings), application_name=name)
            break
        except psycopg2.OperationalError as err:
            unknown = [n for n in NEWER_SETTINGS if n in settings and f'parameter "{n}"' in str(err)]
            if not unknown:
                raise
            for setting in unknown:
                del settings[setting]
    conn.autocommit = True
    return conn
