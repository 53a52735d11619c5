"""The roles a workload logs in as when it is no superuser; the same SQL on both platforms."""

from __future__ import annotations

import psycopg2.extensions
from psycopg2 import sql

from ..core.serverlog import ADMIN_NAME
from ..core.workload_env import APP_ROLE
from .sessions import Connect, admin_session

#: PostgreSQL 16+: members may take the reserved_connections slots (RDS's rds_superuser may take its own 2).
USE_RESERVED = "pg_use_reserved_connections"


def ensure_app_role(connect: Connect, password: str) -> None:
    """Create the app role (LOGIN, NOSUPERUSER), or reset its password if it exists: after a
    database restart on an empty volume it is gone, after an operator restart it is still there.
    Runs in poolbench's own immune session (a read-only default would refuse CREATE ROLE)."""
    ensure_role(connect, APP_ROLE, password)


def ensure_role(connect: Connect, name: str, password: str, use_reserved: bool = False) -> None:
    """Create ``name`` (LOGIN, NOSUPERUSER) or reset its password; ``use_reserved``: also a member of
    pg_use_reserved_connections (a provider's admin role)."""
    conn = admin_session(connect, ADMIN_NAME)
    try:
        _create_or_alter(conn, name, password)
        if use_reserved:  # the role exists from 16 on: a normal role never touches it (older images)
            with conn.cursor() as cur:
                cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(USE_RESERVED), sql.Identifier(name)))
    finally:
        conn.close()


def _create_or_alter(conn: psycopg2.extensions.connection, name: str, password: str) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
        verb = "ALTER" if cur.fetchone() else "CREATE"
        cur.execute(
            sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER PASSWORD %s").format(sql.Identifier(name)),
            (password,),
        )
