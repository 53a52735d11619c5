"""P8 compatibility probe cost: the probe a pooled variant runs before its load (``poolbench.db.compat``),
per driver and pool mode, with the matrix examples' statements; beside it, in the same run, what the
variant pays anyway before its first step: starting (and stopping) its PgBouncer."""

from __future__ import annotations

import functools
import time

import psycopg2

from poolbench.core.compat import ClientTarget, ProbeRequest, findings
from poolbench.core.contracts.drivers import Driver
from poolbench.core.spec import PoolerSpec
from poolbench.core.workload_env import DATABASE, SUPERUSER
from poolbench.db.compat import probe
from poolbench.db.pooler import PoolerProbe
from poolbench.local.pgbouncer import LocalPgBouncer

from .common import Result, fmt, median, postgres

ON_CONNECT = ("SET statement_timeout = '5s'", "LISTEN cache_invalidation")
TRANSACTION = ("SET work_mem = '64MB'", "SELECT pg_try_advisory_lock(42)", "SELECT pg_sleep(0.02)")
DRIVERS: tuple[tuple[Driver, str], ...] = (
    ("psycopg2", "pooling"),
    ("psycopg", "defaults"),
    ("psycopg", "pooling"),
    ("asyncpg", "defaults"),
    ("asyncpg", "pooling"),
)
PASSWORD = "p8-password"
GOAL_SECONDS = 2.0


def run(smoke: bool) -> Result:
    reps = 1 if smoke else 5
    rows = []
    starts: list[float] = []
    worst = 0.0
    left_behind = 0
    with postgres(max_connections=40) as pg:

        def connect(**extra: object) -> psycopg2.extensions.connection:
            return psycopg2.connect(**pg.connect_kwargs(), connect_timeout=5, **extra)  # type: ignore[call-overload, no-any-return]

        for mode in ("transaction", "session"):
            for _ in range(reps):  # the anchor: the variant's PgBouncer, started and stopped
                t = time.monotonic()
                LocalPgBouncer(
                    PoolerSpec(pool_mode=mode, default_pool_size=4),
                    server_host=pg.host,
                    server_port=pg.port,
                    database=DATABASE,
                    passwords={SUPERUSER: PASSWORD},
                ).start().stop()
                starts.append(time.monotonic() - t)
            bouncer = LocalPgBouncer(
                PoolerSpec(pool_mode=mode, default_pool_size=4),
                server_host=pg.host,
                server_port=pg.port,
                database=DATABASE,
                passwords={SUPERUSER: PASSWORD},
            ).start()
            console = PoolerProbe([functools.partial(bouncer.admin_connect, 0)], DATABASE)
            try:
                target = ClientTarget(bouncer.host, bouncer.ports[0], SUPERUSER, DATABASE, PASSWORD)
                for driver, options in DRIVERS:
                    request = ProbeRequest(mode, 4, ON_CONNECT, TRANSACTION, driver, options)
                    times, found = [], 0
                    for _ in range(reps):
                        t = time.monotonic()
                        trace = probe(target, request, connect, console.drop_server_connections, console.version())
                        times.append(time.monotonic() - t)
                        found = len(findings(trace).findings)
                        with connect() as check, check.cursor() as cur:
                            cur.execute(
                                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                                " AND pid <> pg_backend_pid()"
                            )
                            row = cur.fetchone()
                            left_behind = max(left_behind, row[0] if row else 0)
                        check.close()
                    worst = max(worst, median(times))
                    rows.append((mode, driver, options, median(times), max(times), found))
            finally:
                console.close()
                bouncer.stop()
    anchor = median(starts)
    table = "\n".join(
        f"| {mode} | {driver} ({options}) | {fmt(m)} s | {fmt(mx)} s | {fmt(m / anchor)} | {found} |"
        for mode, driver, options, m, mx, found in rows
    )
    markdown = (
        f"Each probe ran {reps} times against one PgBouncer 1.18 per mode (pool 4) in front of an embedded"
        " PostgreSQL, with the matrix examples' statements (2 on connect, 3 in the transaction); anchor: starting"
        f" and stopping that PgBouncer, {fmt(anchor)} s (median of {len(starts)}), which every pooled variant"
        " pays before its first step anyway. The probe's time includes dropping the pooler's server connections"
        " and waiting until the server shows none of the backends it used.\n\n"
        "| mode | driver (driverOptions) | probe, median | max | ÷ PgBouncer start | findings |\n"
        "|---|---|---|---|---|---|\n" + table
    )
    goals: list[tuple[str, str, bool | None]] = [
        (
            f"compatibility probe ≤ {GOAL_SECONDS:g} s per variant (the slowest driver and mode, median of {reps})",
            f"{fmt(worst)} s ({fmt(worst / anchor)} × starting the variant's PgBouncer)",
            worst <= GOAL_SECONDS,
        ),
        (
            "the probe leaves no backend behind (client backends on the server after each probe)",
            str(left_behind),
            left_behind == 0,
        ),
    ]
    return Result(
        "P8",
        "Compatibility probe cost",
        goals,
        markdown,
        data={"rows": rows, "anchor_seconds": anchor},
    )
