"""Pooled variants against a real PostgreSQL and a real PgBouncer (Debian's, started by the runner),
in cases whose answers the pool arithmetic knows.

The shapes make the answers exact: a QueuePool with ``poolSize == threads`` and no overflow opens
exactly ``threads`` client connections per replica and keeps them all (the ghosts); a sleeping
statement keeps every client busy, so the pooler's server pool fills to its size and the rest wait.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from poolbench.core.benchmark import full_status
from poolbench.core.results import BenchmarkStatus, StepResult
from poolbench.core.spec import parse_document
from poolbench.local import runner
from poolbench.local.pgbouncer import find_pgbouncer
from tests.conftest import ROOT, make_doc

pytestmark = pytest.mark.postgres


def test_pgbouncer_is_installed() -> None:
    """The tier needs the real pooler: a missing binary fails here, loudly, never skips."""
    assert find_pgbouncer()


def run(
    name: str,
    *,
    replicas: list[int],
    threads: int,
    pooler: dict[str, Any],
    on_error: str = "count",
    hold: float = 1.0,
    iterations: int = 5,
    sleep: float = 0.1,
    direct_first: bool = False,
    role: str = "superuser",
) -> BenchmarkStatus:
    variants = [{"name": "pooled", "pooler": {"type": "PgBouncer", **pooler}}]
    if direct_first:
        variants.insert(0, {"name": "direct"})
    doc = make_doc(
        name=name,
        steps=replicas,
        stepTimeoutSeconds=60,
        sampling={"intervalMs": 20},
        postgres={"maxConnections": 40},
        stopOnFailure=False,
        variants=variants,
        workload={
            "threads": threads,
            "iterations": iterations,
            "holdSeconds": hold,
            "statement": f"SELECT pg_sleep({sleep})",
            "onError": on_error,
            "role": role,
            "engine": {"poolSize": threads, "maxOverflow": 0},
        },
    )
    return runner.run_local(parse_document(doc)).status


def pooled_steps(status: BenchmarkStatus) -> list[StepResult]:
    return next(v for v in status.variants if v.name == "pooled").steps


def test_transaction_mode_caps_server_backends_at_the_pool_size() -> None:
    # 3 replicas × 6 threads, each replica holding 6 client connections: 18 clients, 18 busy at once,
    # behind a pool of 4 server connections: the server sees exactly 4, the other 14 clients wait.
    status = run("tx", replicas=[3], threads=6, pooler={"poolMode": "transaction", "defaultPoolSize": 4})
    step = pooled_steps(status)[0]
    assert step.pooler is not None, step
    assert step.outcome == "Passed", step.reason
    assert step.errors.total() == 0
    assert step.queries == 3 * 6 * 5
    assert step.predicted_peak == step.pooler.server_capacity == 4
    assert step.peak_connections == 4  # server backends: the pool, not the 18 clients
    assert step.pooler.predicted_client_peak == step.pooler.client_peak_connections == 18
    assert step.pooler.waiting_peak >= 1
    assert step.pooler.max_wait_ms > 0
    # The app's ghosts are its 18 idle client connections, held at the pooler; the server's idle
    # backends at the end are the pooler's 4 (transaction mode keeps them until server_idle_timeout).
    assert step.predicted_idle == step.idle_at_end == 18
    assert step.server_idle_at_end == 4
    assert step.latency_ms.p50 >= 100  # a statement never takes less than its sleep
    assert status.variants[0].verdict is not None
    assert "server backends ≤ 1 × (4) = 4" in status.variants[0].verdict.reason


def test_session_mode_pins_server_connections_and_waiting_clients_time_out() -> None:
    # 2 replicas × 3 threads hold 6 clients; session mode gives 4 of them a server connection each
    # for as long as they stay open (the pools keep them through the 4 s hold), so exactly 2 wait,
    # until query_wait_timeout (2 s) disconnects them.
    status = run(
        "session",
        replicas=[2],
        threads=3,
        hold=4.0,
        pooler={"poolMode": "session", "defaultPoolSize": 4, "queryWaitTimeoutSeconds": 2},
    )
    step = pooled_steps(status)[0]
    assert step.pooler is not None, step
    assert step.outcome == "Failed"
    assert step.first_error_class == "poolerQueryWaitTimeout"
    assert step.errors.pooler_query_wait_timeout >= 2
    # psycopg2 says only "server closed the connection unexpectedly"; libpq kept PgBouncer's text.
    assert "query_wait_timeout" in (step.first_error or "")
    assert step.peak_connections == 4
    assert step.pooler.client_peak_connections == 6
    # 2 clients (6 − 4 server connections) wait for seconds; at the very start all 6 may wait a moment
    # for the pooler's first server logins, and the peak counts them too.
    assert 2 <= step.pooler.waiting_peak <= 6
    assert step.pooler.max_wait_ms >= 1000
    verdict = status.variants[0].verdict
    assert verdict is not None
    assert verdict.first_failing_replicas == 2
    assert "poolerQueryWaitTimeout" in verdict.summary
    assert "session mode a client holds its server connection" in verdict.reason


def test_max_client_conn_refuses_clients_beyond_it() -> None:
    # max_client_conn 5, one taken by the benchmark's monitor: 4 of the 6 client connections fit.
    status = run(
        "maxclient",
        replicas=[2],
        threads=3,
        pooler={"poolMode": "transaction", "defaultPoolSize": 10, "maxClientConn": 5},
    )
    step = pooled_steps(status)[0]
    assert step.pooler is not None, step
    assert step.outcome == "Failed"
    assert step.pooler.client_capacity == 4
    assert step.first_error_class == "poolerMaxClientConn"
    assert step.errors.pooler_max_client_conn >= 2
    assert "no more connections allowed (max_client_conn)" in (step.first_error or "")
    # Never more than the 4 the pooler accepts besides the monitor. Not always all 4 at one read: while
    # refused clients retry, a slot may be held by a client PgBouncer is still logging in or closing
    # (counted against max_client_conn, not yet or no longer in SHOW POOLS); a CI run under load saw 3.
    assert 1 <= step.pooler.client_peak_connections <= step.pooler.client_capacity
    assert step.queries > 0  # the clients that got in did their work


def test_variants_run_in_turn_against_one_server_from_a_clean_slate() -> None:
    # direct, then pooled; two steps each. The pooler's server connections are dropped between steps
    # (KILL + RESUME on its console), so nothing is left over for the loop to terminate.
    status = run(
        "ab", replicas=[1, 2], threads=4, direct_first=True, pooler={"poolMode": "transaction", "defaultPoolSize": 3}
    )
    assert [v.name for v in status.variants] == ["direct", "pooled"]
    direct, pooled = status.variants
    assert status.verdict == direct.verdict  # the printer columns show the first
    assert [s.peak_connections for s in direct.steps] == [4, 8]
    assert [s.idle_at_end for s in direct.steps] == [4, 8]
    assert not any(s.pooler for s in direct.steps)
    assert [s.peak_connections for s in pooled.steps] == [3, 3]
    assert [s.pooler.client_peak_connections if s.pooler else None for s in pooled.steps] == [4, 8]
    assert all(s.leftover_backends == 0 for s in direct.steps + pooled.steps)
    assert status.phase == "Completed"
    assert status.comparison.startswith("Scales furthest: direct, pooled (2 replicas).")
    assert "pooled: 2 replicas safe, peak 3 server backends" in status.comparison


def test_a_normal_role_logs_in_through_the_pooler() -> None:
    # role app: the pooler logs in to the server as poolbench_app with the generated password.
    status = run("approle", replicas=[2], threads=3, role="app", pooler={"poolMode": "session", "defaultPoolSize": 6})
    step = pooled_steps(status)[0]
    assert step.pooler is not None, step
    assert step.outcome == "Passed", step.reason
    assert step.peak_connections == step.pooler.client_peak_connections == 6  # session: one server connection each
    assert step.usable_connections == 40 - 3 - 1


# Alone: the seed's 10 NullPool replicas through one PgBouncer must finish within the step's timeout, which
# a machine shared with another tier's control plane and pods did not always give them (the step timed out).
@pytest.mark.serial
def test_the_seed_with_pgbouncer_through_the_cli(tmp_path: Path) -> None:
    """manifests/examples/seed-pgbouncer.yaml as a user runs it: direct fails at 10 replicas; transaction
    mode with NullPool carries 10 replicas on at most 20 server backends; session mode's clients wait."""
    out, plot = tmp_path / "r.json", tmp_path / "v.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "poolbench.cli",
            "run",
            str(ROOT / "manifests/examples/seed-pgbouncer.yaml"),
            "--output",
            str(out),
            "--plot",
            str(plot),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    document = json.loads(out.read_text())
    assert "steps" not in document["status"]
    status = full_status(document["status"])  # the written status leaves fields at their default out
    variants = {v["name"]: v for v in status["variants"]}
    direct, tx, session = variants["direct"], variants["tx-nullpool"], variants["session"]
    assert [s["outcome"] for s in direct["steps"]] == ["Passed", "Failed"]
    assert direct["steps"][1]["firstErrorClass"] == "tooManyClients"
    assert direct["verdict"]["maxSafeReplicas"] == 5
    assert direct["verdict"]["firstFailingReplicas"] == 10
    assert status["verdict"] == direct["verdict"]
    assert [s["outcome"] for s in tx["steps"]] == ["Passed", "Passed"], [s.get("reason") for s in tx["steps"]]
    for step in tx["steps"]:
        assert step["pooler"]
        assert step["predictedPeak"] == 20
        assert step["peakConnections"] == 20  # 75 or 150 busy clients keep the pool of 20 full, never more
        assert 20 < step["pooler"]["clientPeakConnections"] <= step["pooler"]["predictedClientPeak"]
        assert step["idleAtEnd"] == 0  # NullPool keeps no ghosts
    assert tx["verdict"]["maxSafeReplicas"] == 10
    first = session["steps"][0]
    assert first["pooler"]
    assert first["peakConnections"] <= 20
    assert first["pooler"]["waitingPeak"] > 0  # 75 clients on 20 server connections held for the clients' lifetime
    if first["outcome"] == "Failed":
        assert first["firstErrorClass"] in ("poolerQueryWaitTimeout", "poolerMaxClientConn")
    assert status["comparison"].startswith("Scales furthest: tx-nullpool (10 replicas).")
    assert any("pooler" in row for row in document["timeline"])
    assert "Variants compared" in proc.stdout
    assert "variant tx-nullpool" in proc.stdout
    assert plot.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("driver", "mode", "pool"),
    [
        ("asyncpg", "transaction", 2),
        ("psycopg", "transaction", 2),
        ("asyncpg", "session", 8),
        ("psycopg", "session", 8),
    ],
)
def test_each_driver_runs_through_each_pool_mode_without_prepared_statement_clashes(
    driver: str, mode: str, pool: int
) -> None:
    # 2 replicas × 4 tasks/threads. In transaction mode they share 2 server connections: each statement may
    # land on a server connection another client prepared statements on; in session mode each client keeps
    # its own. Configured for the mode, the drivers never clash: every attempt succeeds, direct and pooled.
    doc = make_doc(
        name=f"{mode[:2]}-{driver}",
        steps=[2],
        stepTimeoutSeconds=60,
        sampling={"intervalMs": 20},
        postgres={"maxConnections": 40},
        stopOnFailure=False,
        variants=[
            {"name": "direct"},
            {"name": "pooled", "pooler": {"type": "PgBouncer", "poolMode": mode, "defaultPoolSize": pool}},
        ],
        workload={
            "driver": driver,
            "threads": 4,
            "iterations": 15,
            "holdSeconds": 1,
            "onError": "count",
            "statement": "SELECT pg_sleep(0.01)",
            "engine": {"poolSize": 4, "maxOverflow": 0},
        },
    )
    status = runner.run_local(parse_document(doc)).status
    direct, pooled = status.variants
    for step in direct.steps + pooled.steps:
        assert step.outcome == "Passed", step.reason
        assert step.errors.total() == 0
        assert step.queries == 2 * 4 * 15
    at_pooler = pooled.steps[0].pooler
    assert at_pooler is not None
    assert pooled.steps[0].peak_connections == pool
    assert at_pooler.client_peak_connections == 8
    # Neither variant failed: the comparison ranks them side by side and blames nothing on pooling.
    assert status.comparison.startswith("Scales furthest: direct, pooled (2 replicas).")
