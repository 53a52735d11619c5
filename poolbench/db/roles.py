"""The normal role a ``role: app`` workload logs in as; the same SQL on both platforms."""

from __future__ import annotations

import psycopg2.extensions
from psycopg2 import sql

from ..core.workload_env import APP_ROLE
from .sessions import ADMIN_NAME, Connect, admin_session


def ensure_app_role(connect: Connect, password: str) -> None:
    """Create the app role (LOGIN, NOSUPERUSER), or reset its password if it exists: after a
    database restart on an empty volume it is gone, after an operator restart it is still there.
    Runs in poolbench's own immune session (a read-only default would refuse CREATE ROLE)."""
    conn = admin_session(connect, ADMIN_NAME)
    try:
        _create_or_alter(conn, password)
    finally:
        conn.close()


def _create_or_alter(conn: psycopg2.extensions.connection, password: str) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,))
        verb = "ALTER" if cur.fetchone() else "CREATE"
        cur.execute(
            sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER PASSWORD %s").format(sql.Identifier(APP_ROLE)),
            (password,),
        )
