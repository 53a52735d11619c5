"""Hostile server settings and odd SQL against a real PostgreSQL: the numbers stay right.

Each case is one the pool arithmetic can answer: 2 replicas, 2 threads, QueuePool size 2 without
overflow, a statement that sleeps 0.3 s twice per thread, so each replica holds exactly 2 busy
connections for 0.6 s and then 2 idle ones (its ghosts) for the hold: peak 4, ghosts 4.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from poolbench.core.results import StepResult
from poolbench.core.spec import parse_document
from poolbench.db.sessions import admin_session
from poolbench.local.embedded import LocalPostgres
from poolbench.local.runner import run_local
from tests.conftest import ROOT, make_doc

pytestmark = pytest.mark.postgres

SLEEP = "SELECT pg_sleep(0.3)"


def run_steps(
    name: str,
    steps: list[int],
    settings: dict[str, str] | None = None,
    timeout: int = 30,
    interval_ms: int = 50,
    **workload: Any,
) -> list[StepResult]:
    wl = {
        "threads": 2,
        "iterations": 2,
        "holdSeconds": 1.5,
        "statement": SLEEP,
        "engine": {"poolSize": 2, "maxOverflow": 0},
        **workload,
    }
    bench = parse_document(
        make_doc(
            name=name,
            steps=steps,
            workload=wl,
            stepTimeoutSeconds=timeout,
            stopOnFailure=False,
            sampling={"intervalMs": interval_ms},
            postgres={"maxConnections": 30, "settings": settings or {}},
        )
    )
    return run_local(bench).status.variants[0].steps


# Settings that cancel statements or end sessions: the monitor must see through every one. The
# monitor reads every 100 ms, so a session-ending timeout shorter than that would end an unprotected
# monitor between two reads; the workload checks out once per thread (one iteration of two sleeps), so
# no pooled connection of the workload's sits idle past a timeout and is then used again, however
# slowly the machine schedules the threads.
MONITOR_KILLERS = [
    {"idle_session_timeout": "40ms"},  # ends the monitor between two reads
    {"statement_timeout": "1ms"},  # cancels the monitor's PREPARE and reads (and the workload's sleeps)
    {"idle_in_transaction_session_timeout": "40ms", "lock_timeout": "1ms"},
    # PostgreSQL 17: ends any transaction, autocommit ones too. Not shorter: a new session starts inside
    # a transaction before its own settings apply, so on a busy machine a 2 ms limit refuses every login.
    {"transaction_timeout": "10ms"},
    {"default_transaction_read_only": "on", "search_path": "nowhere"},
]


@pytest.mark.serial
@pytest.mark.parametrize("settings", MONITOR_KILLERS, ids=[",".join(s) for s in MONITOR_KILLERS])
def test_the_monitor_is_immune_to_the_servers_timeouts(settings: dict[str, str]) -> None:
    (step,) = run_steps(
        "immune",
        [2],
        settings,
        onError="count",
        iterations=1,
        holdSeconds=2.5,
        statement="SELECT pg_sleep(0.3); SELECT pg_sleep(0.3)",
        interval_ms=100,
    )
    assert step.sample_gaps == 0, step.monitor_error
    assert step.samples >= 20, step.monitor_error
    assert step.outcome != "Inconclusive"
    if "statement_timeout" in settings:
        # The workload's statements are cancelled: an honest failure, classified and quoted.
        assert step.outcome == "Failed"
        assert step.first_error_class == "other"
        assert "canceling statement due to statement timeout" in (step.first_error or "")
    elif "transaction_timeout" in settings:  # the server ends the workload's sessions
        assert step.outcome == "Failed"
        assert step.first_error_class == "other"
    else:
        assert step.peak_connections == step.predicted_peak == 4
        assert step.outcome == "Passed", step.reason


def test_role_app_works_on_a_read_only_server() -> None:
    (step,) = run_steps("readonly", [2], {"default_transaction_read_only": "on"}, role="app")
    assert step.outcome == "Passed", step.reason
    assert step.peak_connections == 4


@pytest.mark.parametrize(
    "statement",
    [
        "SET application_name = 'hidden'; SELECT pg_sleep(0.3)",
        "SET application_name = ''; SELECT pg_sleep(0.3)",
        "SELECT set_config('application_name', 'pb-other-name', false), pg_sleep(0.3)",
    ],
)
def test_connections_are_counted_however_they_name_themselves(statement: str) -> None:
    (step,) = run_steps("renamed", [2], statement=statement)
    assert step.outcome == "Passed", step.reason
    assert step.peak_connections == step.predicted_peak == 4
    assert step.idle_at_end == step.predicted_idle == 4


def test_a_timed_out_step_is_a_timeout_and_its_backends_do_not_reach_the_next_step() -> None:
    first, second = run_steps("stuck", [2, 1], statement="SELECT pg_sleep(60)", timeout=5, holdSeconds=0.5)
    for step, replicas in ((first, 2), (second, 1)):
        assert step.timed_out
        assert step.outcome == "Failed"
        assert step.crashed_replicas == 0
        assert "exit code" not in (step.reason or "")
        assert "the step timed out" in (step.reason or "")
        # The killed clients' statements kept running on the server: terminated, and reported.
        assert step.leftover_backends == replicas * 2
    # Step 2 (1 replica × 2) measured only its own backends, not step 1's leftovers.
    assert second.peak_connections == 2


RAW_SQL = [
    ("""SELECT '{"a": 1, "b": ":not_a_bind"}'::json ->> 'b'""", None),
    ("SELECT '12:30:00'::time, '2026-11-25 10:00'::timestamp", None),
    ("SELECT 'x' LIKE '%x%', '100%'", None),
    ("SELECT format('%s:%s', 'a', 'b'), $$:tag %(name)s$$", None),
    ("SELECT 1 WHERE 'a:b' ~ '^[a-z]:[a-z]$'", None),
    ("SELECT 1::int", None),
    ("SELEC 1", "syntax error"),
]


@pytest.mark.parametrize(("statement", "error"), RAW_SQL, ids=[s[:30] for s, _ in RAW_SQL])
def test_statements_run_as_raw_sql(statement: str, error: str | None, local_pg: LocalPostgres, tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    env = {
        **os.environ,
        **local_pg.client_env(),
        "PGUSER": "postgres",
        "PGDATABASE": "postgres",
        "POOLBENCH_THREADS": "1",
        "POOLBENCH_ITERATIONS": "3",
        "POOLBENCH_STATEMENT": statement,
        "POOLBENCH_HOLD_SECONDS": "0",
        "POOLBENCH_ON_ERROR": "count",
        "POOLBENCH_SUMMARY_PATH": str(summary),
    }
    subprocess.run([sys.executable, "-m", "workload"], env=env, cwd=ROOT, timeout=60, check=True)
    result = json.loads(summary.read_text())
    if error is None:
        assert result["outcomes"]["ok"] == 3
        assert result["firstError"] is None
    else:
        assert result["outcomes"]["other"] == 3
        assert error in result["firstError"]


def test_the_verdict_names_the_first_error_and_the_cli_prints_it(tmp_path: Path) -> None:
    doc = make_doc(
        name="syntax",
        steps=[1],
        workload={"statement": "SELEC 1", "threads": 1, "iterations": 2, "holdSeconds": 0.2, "onError": "count"},
    )
    path = tmp_path / "b.yaml"
    path.write_text(json.dumps(doc))
    done = subprocess.run(
        [sys.executable, "-m", "poolbench.cli", "run", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())
    assert 'failed with other (syntax error at or near "SELEC"' in out
    assert 'First error (other): syntax-r0: syntax error at or near "SELEC"' in out.replace("pb-syntax-s1-", "syntax-")


def test_an_older_server_without_the_newer_timeouts_still_gets_an_immune_session(local_pg: LocalPostgres) -> None:
    """PostgreSQL before 17 has no transaction_timeout (before 14 no idle_session_timeout): such a server
    refuses a session that names it at connect time; the session is opened again without it."""
    attempts: list[str] = []

    def connect(**extra: Any) -> Any:
        options = extra["options"]
        attempts.append(options)
        for newer in ("transaction_timeout", "idle_session_timeout"):
            if newer in options:  # what a PostgreSQL 13 answers
                raise psycopg2.OperationalError(f'FATAL:  unrecognized configuration parameter "{newer}"')
        return psycopg2.connect(**local_pg.connect_kwargs(), **extra)

    conn = admin_session(connect, "older-server")
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone() == ("0",)
    finally:
        conn.close()
    assert len(attempts) == 3
    assert "transaction_timeout" not in attempts[-1]
