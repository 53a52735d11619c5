"""Reading a live server (``poolbench.db.live``) against a real PostgreSQL: its limits, its client backends
with their states and ages, the monitor role's rights, and the watching session's immunity and secrecy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, cast

import psycopg2
import psycopg2.extensions
import pytest

from poolbench.db.live import (
    DsnError,
    MonitorRoleError,
    check_dsn,
    check_monitor_role,
    open_watch,
    read_backends,
    read_server_facts,
)
from poolbench.db.roles import ensure_role
from poolbench.local.embedded import LocalPostgres

pytestmark = pytest.mark.postgres

PASSWORD = "s3cret-Pa55-word"


def scram_server(**settings: str) -> LocalPostgres:
    """40 slots, 3 for superusers and 2 for pg_use_reserved_connections: 35 for a normal role. Roles app,
    other, blind log in with PASSWORD over TCP (scram-sha-256); watcher is also a member of pg_monitor; the
    superuser stays trusted."""
    server = LocalPostgres(
        max_connections=40, superuser_reserved_connections=3, reserved_connections=2, settings=dict(settings)
    ).start()
    try:
        connect = connector(server)
        for role in ("app", "other", "watcher", "blind"):
            ensure_role(connect, role, PASSWORD)
        admin = connect(options="-c statement_timeout=0 -c idle_session_timeout=0")
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("GRANT pg_monitor TO watcher")
        hba = server.data_dir / "pg_hba.conf"
        hba.write_text("host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        with admin.cursor() as cur:
            cur.execute("SELECT pg_reload_conf()")
        admin.close()
        time.sleep(0.5)  # the postmaster reloads pg_hba.conf on SIGHUP, asynchronously
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def pg() -> Iterator[LocalPostgres]:
    """The server's own timeouts are short: the watching session must outlive them."""
    server = scram_server(statement_timeout="100ms", idle_session_timeout="200ms")
    yield server
    server.stop()


def connector(server: LocalPostgres) -> Any:
    def connect(**extra: object) -> psycopg2.extensions.connection:
        return cast(
            psycopg2.extensions.connection,
            psycopg2.connect(**{**server.connect_kwargs(), **extra}, connect_timeout=5),
        )

    return connect


def dsn(server: LocalPostgres, user: str) -> str:
    return f"postgresql://{user}@{server.host}:{server.port}/postgres"


def hold(server: LocalPostgres, user: str, count: int) -> list[psycopg2.extensions.connection]:
    """``count`` idle sessions of ``user``, immune to the server's idle timeout."""
    return [
        psycopg2.connect(
            **server.connect_kwargs(user),
            password=PASSWORD,
            options="-c idle_session_timeout=0",
            application_name=f"{user}-held",
        )
        for _ in range(count)
    ]


def test_the_server_facts_are_the_running_servers(pg: LocalPostgres) -> None:
    watch = open_watch(dsn(pg, "watcher"), PASSWORD)
    try:
        facts = read_server_facts(watch)
        assert facts.server_version_num >= 160000
        assert (facts.max_connections, facts.superuser_reserved_connections, facts.reserved_connections) == (40, 3, 2)
        assert facts.usable_for_normal_role() == 35
    finally:
        watch.close()


def test_the_watch_outlives_the_servers_timeouts_and_reads_fresh_snapshots(pg: LocalPostgres) -> None:
    watch = open_watch(dsn(pg, "watcher"), PASSWORD)
    try:
        assert watch.autocommit
        with watch.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone() == ("0",)
            cur.execute("SHOW idle_session_timeout")
            assert cur.fetchone() == ("0",)
            cur.execute("SELECT pg_sleep(0.3)")  # longer than the server's 100 ms statement_timeout
        time.sleep(0.5)  # longer than the server's 200 ms idle_session_timeout
        before = {b.pid for b in read_backends(watch) if b.usename == "other"}
        held = hold(pg, "other", 2)
        try:
            after = {b.pid for b in read_backends(watch) if b.usename == "other"}  # autocommit: a new snapshot
            assert after - before == {c.get_backend_pid() for c in held}
        finally:
            for conn in held:
                conn.close()
    finally:
        watch.close()


def test_backends_are_client_backends_with_their_state_and_server_side_ages(pg: LocalPostgres) -> None:
    held = hold(pg, "other", 3)
    busy = hold(pg, "app", 1)[0]
    busy.autocommit = True
    try:
        with busy.cursor() as cur:
            cur.execute("BEGIN; SELECT 1")  # idle in transaction, for good
        watch = open_watch(dsn(pg, "watcher"), PASSWORD)
        try:
            backends = read_backends(watch)
            own_pid = watch.get_backend_pid()
        finally:
            watch.close()
        mine = {b.pid: b for b in backends}
        assert own_pid not in mine  # the reading session excludes itself
        for conn in held:
            b = mine[conn.get_backend_pid()]
            assert (b.usename, b.application_name, b.datname, b.client_addr, b.state) == (
                "other",
                "other-held",
                "postgres",
                "127.0.0.1",
                "idle",
            )
            assert b.backend_age_seconds >= 0
            assert b.state_age_seconds is not None
            assert b.state_age_seconds >= 0
        assert mine[busy.get_backend_pid()].state == "idle in transaction"
        # only client backends: no checkpointer, walwriter, autovacuum launcher
        assert all(b.usename is not None for b in backends)
    finally:
        for conn in [*held, busy]:
            conn.close()


def test_a_role_without_pg_monitor_is_refused_with_the_grant_it_needs(pg: LocalPostgres) -> None:
    held = hold(pg, "other", 1)
    blind = open_watch(dsn(pg, "blind"), PASSWORD)
    try:
        # What it would see: the other role's backend with its state and type hidden, so not even counted.
        with blind.cursor() as cur:
            cur.execute(
                "SELECT usename, state, backend_type FROM pg_stat_activity WHERE pid = %s", (held[0].get_backend_pid(),)
            )
            assert cur.fetchall() == [("other", None, None)]
        assert held[0].get_backend_pid() not in {b.pid for b in read_backends(blind)}
        with pytest.raises(MonitorRoleError) as refused:
            check_monitor_role(blind)
        assert 'GRANT pg_monitor TO "blind";' in str(refused.value)
        watcher = open_watch(dsn(pg, "watcher"), PASSWORD)
        try:
            check_monitor_role(watcher)  # a member of pg_monitor: passes, and sees the state
            assert {b.pid: b for b in read_backends(watcher)}[held[0].get_backend_pid()].state == "idle"
        finally:
            watcher.close()
        superuser = open_watch(dsn(pg, "postgres"))
        try:
            check_monitor_role(superuser)
        finally:
            superuser.close()
    finally:
        blind.close()
        for conn in held:
            conn.close()


def test_a_wrong_password_fails_without_showing_it_and_a_dsn_with_one_is_refused(pg: LocalPostgres) -> None:
    wrong = "wrong-" + PASSWORD
    with pytest.raises(psycopg2.OperationalError) as failed:
        open_watch(dsn(pg, "watcher"), wrong)
    assert "password authentication failed" in str(failed.value)
    assert wrong not in str(failed.value)
    for bad in (
        f"postgresql://watcher:{PASSWORD}@{pg.host}:{pg.port}/postgres",
        f"host={pg.host} port={pg.port} user=watcher password={PASSWORD}",
    ):
        with pytest.raises(DsnError) as refused:
            check_dsn(bad)
        assert PASSWORD not in str(refused.value)
        assert "process list" in str(refused.value)
    with pytest.raises(DsnError) as malformed:
        check_dsn(f"host={pg.host} password={PASSWORD} user")
    assert PASSWORD not in str(malformed.value)
