"""A local benchmark of a managed provider refuses where the provider would: no role is a superuser there.

RDS with 0.1 GiB: max_connections 11 (107374182 // 9531392). Its master user (rds_superuser) may not take
superuser_reserved_connections 3; a normal role also not rds.rds_superuser_reserved_connections 2. With the
benchmark's monitor holding one slot: 11 - 3 - 1 = 7 for role superuser, 11 - 5 - 1 = 5 for role app.
"""

from __future__ import annotations

from typing import cast

import psycopg2
import pytest

from poolbench.core.budget import usable_connections
from poolbench.core.spec import parse_document, parse_spec
from poolbench.core.workload_env import PROVIDER_ADMIN_ROLE, local_role
from poolbench.db.probe import Probe
from poolbench.db.roles import ensure_role
from poolbench.local.embedded import LocalPostgres
from poolbench.local.runner import run_local
from tests.conftest import make_doc

pytestmark = pytest.mark.postgres

RDS_SMALL = {"provider": {"name": "rds", "memoryGiB": 0.1}}


def test_the_local_server_refuses_each_role_exactly_where_the_provider_would() -> None:
    specs = {
        role: parse_spec({"steps": [1], "postgres": RDS_SMALL, "workload": {"role": role}})
        for role in ("superuser", "app")
    }
    assert {r: usable_connections(s) for r, s in specs.items()} == {"superuser": 7, "app": 5}
    pg_spec = specs["app"].postgres
    superuser_reserved, reserved = pg_spec.server_reserved()
    assert (pg_spec.max_connections, superuser_reserved, reserved) == (11, 3, 2)
    with LocalPostgres(pg_spec.max_connections, superuser_reserved, reserved_connections=reserved) as pg:

        def connect(**extra: object) -> psycopg2.extensions.connection:
            return cast(
                psycopg2.extensions.connection, psycopg2.connect(**{**pg.connect_kwargs(), **extra}, connect_timeout=5)
            )

        monitor = Probe(connect)
        monitor.open()  # the benchmark's monitor holds its slot first, as in a run
        try:
            for role, spec in specs.items():
                login = local_role(spec)
                assert login != "postgres"
                ensure_role(connect, login, "pw", use_reserved=login == PROVIDER_ADMIN_ROLE)
                held: list[psycopg2.extensions.connection] = []
                try:
                    with pytest.raises(psycopg2.OperationalError) as refused:
                        while len(held) < pg_spec.max_connections:
                            held.append(connect(user=login))
                    assert len(held) == usable_connections(spec), role
                    assert "remaining connection slots are reserved" in str(refused.value)
                    # The monitor (a real superuser) still gets in: the provider's reserve is not the benchmark's.
                    connect().close()
                finally:
                    for conn in held:
                        conn.close()
            with connect() as check, check.cursor() as cur:
                cur.execute("SELECT rolname, rolsuper FROM pg_roles WHERE rolname = %s", (PROVIDER_ADMIN_ROLE,))
                assert cur.fetchall() == [(PROVIDER_ADMIN_ROLE, False)]
        finally:
            monitor.close()


def test_a_local_run_of_a_provider_fails_where_the_providers_admin_role_would() -> None:
    # 2 connections per replica; role superuser is RDS's master user: 7 usable, so 3 replicas (6) fit, 4 (8) do
    # not. A real superuser would have fit 5 (10 of 11 with the monitor).
    bench = parse_document(
        make_doc(
            name="rds",
            steps=[3, 4],
            stepTimeoutSeconds=60,
            sampling={"intervalMs": 20},
            postgres=RDS_SMALL,
            workload={
                "threads": 2,
                "iterations": 30,
                "holdSeconds": 1.5,
                "statement": "SELECT pg_sleep(0.05)",
                "onError": "count",
                "engine": {"poolSize": 2, "maxOverflow": 0},
            },
        )
    )
    status = run_local(bench).status
    fit, over = status.variants[0].steps
    assert fit.outcome == "Passed", fit.reason
    assert fit.peak_connections == 6 == fit.predicted_peak
    assert over.outcome == "Failed", over.reason
    assert over.errors.reserved_slots > 0
    assert over.peak_connections <= 7
    assert status.verdict is not None
    assert (status.verdict.max_safe_replicas, status.verdict.first_failing_replicas) == (3, 4)
    assert "7 usable (11 max_connections − 3 reserved − 1 monitor)" in status.verdict.reason


def test_a_pooled_run_of_a_provider_logs_in_as_its_admin_role_not_a_superuser() -> None:
    # PgBouncer in session mode, 6 server connections, in front of RDS 0.1 GiB (7 usable for the master user):
    # 2 replicas × 3 clients hold 6 server connections, each logged in as the non-superuser admin role.
    bench = parse_document(
        make_doc(
            name="rdspool",
            steps=[2],
            stepTimeoutSeconds=60,
            sampling={"intervalMs": 20},
            postgres=RDS_SMALL,
            variants=[{"name": "pooled", "pooler": {"type": "PgBouncer", "poolMode": "session", "defaultPoolSize": 6}}],
            workload={
                "threads": 3,
                "iterations": 5,
                "holdSeconds": 1.0,
                "statement": "SELECT pg_sleep(0.1)",
                "onError": "count",
                "engine": {"poolSize": 3, "maxOverflow": 0},
            },
        )
    )
    status = run_local(bench).status
    step = status.variants[0].steps[0]
    assert step.pooler is not None, step
    assert step.outcome == "Passed", step.reason
    assert step.peak_connections == step.pooler.client_peak_connections == 6
    assert step.usable_connections == 11 - 3 - 1
