"""psycopg 3 and asyncpg workloads against a real PostgreSQL: the same pool arithmetic, measured, and
their refusals classified (each driver words and types them its own way)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from poolbench.core.contracts.replica_env import WorkloadConfig
from poolbench.core.outcomes import PREPARED_STATEMENT_CLASH, classify_exception, short_message
from poolbench.core.results import PoolerStepResult, StepResult
from poolbench.core.spec import PoolerSpec, parse_document
from poolbench.core.verdict import comparison, overall_verdict
from poolbench.core.workload_env import workload_env
from poolbench.local import runner
from poolbench.local.embedded import LocalPostgres
from tests.conftest import ROOT, make_doc
from workload.replica import build_engine, driver_settings

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_measured_equals_predicted(driver: str) -> None:
    # Per replica: QueuePool min(6 callers, 3 + 2) = 5 connections, 3 kept.
    doc = make_doc(
        name=f"drv-{driver}",
        steps=[2, 5],
        stepTimeoutSeconds=60,
        sampling={"intervalMs": 20},
        postgres={"maxConnections": 40},
        stopOnFailure=False,
        workload={
            "driver": driver,
            "threads": 6,
            "iterations": 10,
            "holdSeconds": 1,
            "statement": "SELECT pg_sleep(0.1)",
            "engine": {"poolSize": 3, "maxOverflow": 2},
        },
    )
    steps = runner.run_local(parse_document(doc)).status.variants[0].steps
    assert [s.outcome for s in steps] == ["Passed", "Passed"], [s.reason for s in steps]
    assert [s.peak_connections for s in steps] == [s.predicted_peak for s in steps] == [10, 25]
    assert [s.idle_at_end for s in steps] == [s.predicted_idle for s in steps] == [6, 15]
    assert [s.queries for s in steps] == [2 * 6 * 10, 5 * 6 * 10]
    assert all(s.latency_ms.p50 >= 100 for s in steps)


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
@pytest.mark.parametrize(("role", "expected"), [("superuser", "tooManyClients"), ("app", "reservedSlots")])
def test_refusals_are_classified_for_each_driver(driver: str, role: str, expected: str) -> None:
    # 3 replicas × 4 connections on 8 slots: somebody is refused, in the driver's own words and types.
    doc = make_doc(
        name=f"refuse-{driver}-{role}",
        steps=[3],
        stepTimeoutSeconds=60,
        postgres={"maxConnections": 8, "superuserReservedConnections": 3},
        workload={
            "driver": driver,
            "threads": 4,
            "iterations": 10,
            "holdSeconds": 1,
            "onError": "count",
            "role": role,
            "statement": "SELECT pg_sleep(0.2)",
            "engine": {"poolSize": 4, "maxOverflow": 0},
        },
    )
    step = runner.run_local(parse_document(doc)).status.variants[0].steps[0]
    assert step.outcome == "Failed"
    assert step.first_error_class == expected, step.first_error
    assert getattr(step.errors, {"tooManyClients": "too_many_clients", "reservedSlots": "reserved_slots"}[expected]) > 0


def config(driver: str, pool_mode: str | None = None) -> WorkloadConfig:
    env = {"POOLBENCH_DRIVER": driver, "POOLBENCH_ITERATIONS": "1", "POOLBENCH_APP_NAME": f"clash-{driver}"}
    if pool_mode:
        env |= {"POOLBENCH_POOLER": "PgBouncer", "POOLBENCH_POOL_MODE": pool_mode}
    return WorkloadConfig.from_env(env)


def test_the_pool_mode_reaches_the_replica_and_sets_each_driver_for_transaction_pooling() -> None:
    spec = parse_document(make_doc(workload={"driver": "asyncpg"})).spec
    tx = workload_env(spec, pooler=PoolerSpec(pool_mode="transaction"))
    assert tx["POOLBENCH_POOL_MODE"] == "transaction"
    assert WorkloadConfig.from_env(tx).transaction_pooled
    assert not WorkloadConfig.from_env(workload_env(spec, pooler=PoolerSpec(pool_mode="session"))).transaction_pooled
    assert "POOLBENCH_POOL_MODE" not in workload_env(spec)
    url, args = driver_settings(config("asyncpg", "transaction"))
    assert url == "postgresql+asyncpg://?prepared_statement_cache_size=0"
    assert args["statement_cache_size"] == 0
    names = {args["prepared_statement_name_func"]() for _ in range(100)}
    assert len(names) == 100  # unique: no two clients of one server connection can pick the same name
    assert driver_settings(config("asyncpg")) == (
        "postgresql+asyncpg://",
        {"server_settings": {"application_name": "clash-asyncpg"}},
    )
    assert driver_settings(config("psycopg", "transaction"))[1]["prepare_threshold"] is None
    assert "prepare_threshold" not in driver_settings(config("psycopg", "session"))[1]


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg", "asyncpg"])
def test_prepared_statement_clashes_are_classified_for_each_driver(
    driver: str, local_pg: LocalPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name taken twice on one server connection (42P05) and a name missing on it (26000): the errors
    a driver's prepared statements meet behind a transaction-mode pooler, raised by a real server."""
    for name, value in {**local_pg.client_env(), "PGUSER": "postgres", "PGDATABASE": "postgres"}.items():
        monkeypatch.setenv(name, value)
    engine = build_engine(config(driver))
    statements = ["PREPARE poolbench_p AS SELECT 1", "PREPARE poolbench_p AS SELECT 1"]
    caught: list[BaseException] = []

    async def run_async() -> None:
        async with engine.connect() as conn:
            for sql in statements:
                try:
                    await conn.exec_driver_sql(sql)
                except Exception as exc:  # noqa: BLE001 - the error under test
                    caught.append(exc)
                    await conn.rollback()
            try:
                await conn.exec_driver_sql("EXECUTE poolbench_missing")
            except Exception as exc:  # noqa: BLE001
                caught.append(exc)
        await engine.dispose()

    if driver == "asyncpg":
        asyncio.run(run_async())
    else:
        with engine.connect() as conn:
            for sql in statements:
                try:
                    conn.exec_driver_sql(sql)
                except Exception as exc:  # noqa: BLE001
                    caught.append(exc)
                    conn.rollback()
            try:
                conn.exec_driver_sql("EXECUTE poolbench_missing")
            except Exception as exc:  # noqa: BLE001
                caught.append(exc)
        engine.dispose()
    assert len(caught) == 2, caught
    assert "already exists" in short_message(caught[0])
    assert "does not exist" in short_message(caught[1])
    assert [classify_exception(exc, pooled=True) for exc in caught] == [PREPARED_STATEMENT_CLASH] * 2


def test_a_prepared_statement_clash_is_named_as_a_driver_setting_and_crowns_no_variant() -> None:
    # asyncpg direct passes at 2 replicas; the transaction-mode variant fails on 3 prepared-statement
    # clashes. Pooling did not fail: the comparison names the driver setting and its fix, and no winner.
    spec = parse_document(make_doc(steps=[2], workload={"driver": "asyncpg", "threads": 4})).spec
    tx = PoolerSpec(pool_mode="transaction", default_pool_size=2)
    direct_step = StepResult(replicas=2, outcome="Passed", peak_connections=8)
    clash = StepResult(
        replicas=2,
        outcome="Failed",
        pooler=PoolerStepResult(),
        peak_connections=2,
        first_error_class=PREPARED_STATEMENT_CLASH,
        first_error='r0: prepared statement "__asyncpg_stmt_1__" already exists',
    )
    clash.errors.prepared_statement_clash = 3
    direct, pooled = overall_verdict(spec, [direct_step]), overall_verdict(spec, [clash], tx)
    assert (
        'preparedStatementClash (prepared statement "__asyncpg_stmt_1__" already exists): the driver\'s'
        " server-side prepared statements clash behind PgBouncer transaction mode (a driver setting, not"
        " pooling)" in pooled.summary
    )
    assert "statement_cache_size=0" in pooled.summary
    text = comparison(["direct", "tx"], [direct, pooled], [[direct_step], [clash]])
    assert "Scales furthest" not in text
    assert text.startswith(
        "No winner: tx had 3 attempts fail with preparedStatementClash: the driver's server-side"
        " prepared statements clash behind PgBouncer transaction mode (a driver setting, not"
        " pooling): asyncpg needs prepared_statement_cache_size=0"
    )
    assert (
        "direct: 2 replicas safe, peak 8 server backends; tx: no step passed, fails at 2 (preparedStatementClash)"
        in text
    )
    clash.errors.prepared_statement_clash = 1
    once = comparison(["direct", "tx"], [direct, pooled], [[direct_step], [clash]])
    assert once.startswith("No winner: tx had 1 attempt fail with preparedStatementClash")


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_the_verdict_quotes_the_servers_refusal_without_the_drivers_prefix(driver: str, tmp_path: Path) -> None:
    # 3 replicas × 4 connections on 7 usable slots: the server refuses with "sorry, too many clients already".
    # libpq opens its text with 'connection to server at "…", port N failed: ', psycopg 3 adds 'connection
    # failed: ' before it: the verdict quotes the server's own words, and the run's stderr has no FATAL line.
    doc = make_doc(
        name=f"prefix-{driver}",
        steps=[3],
        stepTimeoutSeconds=60,
        postgres={"maxConnections": 8, "superuserReservedConnections": 3},
        workload={
            "driver": driver,
            "threads": 4,
            "iterations": 5,
            "holdSeconds": 0.5,
            "onError": "count",
            "statement": "SELECT pg_sleep(0.2)",
            "engine": {"poolSize": 4, "maxOverflow": 0},
        },
    )
    path = tmp_path / "b.yaml"
    path.write_text(json.dumps(doc))
    done = subprocess.run(
        [sys.executable, "-m", "poolbench.cli", "run", str(path), "-o", str(tmp_path / "r.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    verdict = json.loads((tmp_path / "r.json").read_text())["status"]["verdict"]
    assert "3 replicas failed with tooManyClients (FATAL: sorry, too many clients already)" in verdict["summary"]
    assert "connection failed" not in verdict["summary"]
    assert "connection to server" not in verdict["summary"]
    assert "FATAL" not in done.stderr, done.stderr
