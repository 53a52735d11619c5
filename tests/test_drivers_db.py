"""psycopg 3 and asyncpg workloads against a real PostgreSQL: the same pool arithmetic, measured, and
their refusals classified (each driver words and types them its own way)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from poolbench.core.spec import parse_document
from poolbench.local import runner
from tests.conftest import ROOT, make_doc

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_measured_equals_predicted(driver: str) -> None:
    # Per replica: QueuePool min(6 callers, 3 + 2) = 5 connections, 3 kept.
    doc = make_doc(name=f"drv-{driver}", steps=[2, 5], stepTimeoutSeconds=60, sampling={"intervalMs": 20},
                   postgres={"maxConnections": 40}, stopOnFailure=False,
                   workload={"driver": driver, "threads": 6, "iterations": 10, "holdSeconds": 1,
                             "statement": "SELECT pg_sleep(0.1)", "engine": {"poolSize": 3, "maxOverflow": 2}})
    status = runner.run_local(parse_document(doc)).status
    assert [s.outcome for s in status.steps] == ["Passed", "Passed"], [s.reason for s in status.steps]
    assert [s.peak_connections for s in status.steps] == [s.predicted_peak for s in status.steps] == [10, 25]
    assert [s.idle_at_end for s in status.steps] == [s.predicted_idle for s in status.steps] == [6, 15]
    assert [s.queries for s in status.steps] == [2 * 6 * 10, 5 * 6 * 10]
    assert all(s.latency_ms.p50 >= 100 for s in status.steps)


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
@pytest.mark.parametrize(("role", "expected"), [("superuser", "tooManyClients"), ("app", "reservedSlots")])
def test_refusals_are_classified_for_each_driver(driver: str, role: str, expected: str) -> None:
    # 3 replicas × 4 connections on 8 slots: somebody is refused, in the driver's own words and types.
    doc = make_doc(name=f"refuse-{driver}-{role}", steps=[3], stepTimeoutSeconds=60,
                   postgres={"maxConnections": 8, "superuserReservedConnections": 3},
                   workload={"driver": driver, "threads": 4, "iterations": 10, "holdSeconds": 1, "onError": "count",
                             "role": role, "statement": "SELECT pg_sleep(0.2)",
                             "engine": {"poolSize": 4, "maxOverflow": 0}})
    step = runner.run_local(parse_document(doc)).status.steps[0]
    assert step.outcome == "Failed"
    assert step.first_error_class == expected, step.first_error
    assert getattr(step.errors, {"tooManyClients": "too_many_clients", "reservedSlots": "reserved_slots"}[expected]) > 0


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_the_verdict_quotes_the_servers_refusal_without_the_drivers_prefix(driver: str, tmp_path: Path) -> None:
    # 3 replicas × 4 connections on 7 usable slots: the server refuses with "sorry, too many clients already".
    # libpq opens its text with 'connection to server at "…", port N failed: ', psycopg 3 adds 'connection
    # failed: ' before it: the verdict quotes the server's own words, and the run's stderr has no FATAL line.
    doc = make_doc(name=f"prefix-{driver}", steps=[3], stepTimeoutSeconds=60,
                   postgres={"maxConnections": 8, "superuserReservedConnections": 3},
                   workload={"driver": driver, "threads": 4, "iterations": 5, "holdSeconds": 0.5, "onError": "count",
                             "statement": "SELECT pg_sleep(0.2)", "engine": {"poolSize": 4, "maxOverflow": 0}})
    path = tmp_path / "b.yaml"
    path.write_text(json.dumps(doc))
    done = subprocess.run([sys.executable, "-m", "poolbench.cli", "run", str(path), "-o", str(tmp_path / "r.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    verdict = json.loads((tmp_path / "r.json").read_text())["status"]["verdict"]
    assert "3 replicas failed with tooManyClients (FATAL: sorry, too many clients already)" in verdict["summary"]
    assert "connection failed" not in verdict["summary"] and "connection to server" not in verdict["summary"]
    assert "FATAL" not in done.stderr, done.stderr
