"""The compatibility probe against a real PostgreSQL behind a real PgBouncer (Debian's): each finding kind
from a statement known to cause it, none from its fixed form, none in session mode, and nothing left
behind (no backend, advisory lock, prepared statement or setting) once the probe is over."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from poolbench.core.benchmark import full_status
from poolbench.core.compat import ClientTarget, ProbeRequest, findings
from poolbench.core.contracts.drivers import Driver
from poolbench.core.results import Compatibility
from poolbench.core.spec import PoolerSpec, parse_document
from poolbench.core.workload_env import DATABASE, SUPERUSER
from poolbench.db.compat import client_connect, probe, snapshot
from poolbench.db.pooler import PoolerProbe
from poolbench.local import runner
from poolbench.local.embedded import LocalPostgres
from poolbench.local.pgbouncer import LocalPgBouncer
from tests.conftest import ROOT, make_doc

pytestmark = pytest.mark.postgres

PASSWORD = "probe-password"
POOL_SIZE = 4


class Pooled:
    """One PgBouncer in front of the test server, and how the probe reaches it."""

    def __init__(self, pg: LocalPostgres, mode: str):
        self.pg = pg
        self.mode = mode
        self.bouncer = LocalPgBouncer(
            PoolerSpec(pool_mode=mode, default_pool_size=POOL_SIZE),  # type: ignore[arg-type]
            server_host=pg.host,
            server_port=pg.port,
            database=DATABASE,
            passwords={SUPERUSER: PASSWORD},
        ).start()
        self.console = PoolerProbe([functools.partial(self.bouncer.admin_connect, 0)], DATABASE)
        self.target = ClientTarget(self.bouncer.host, self.bouncer.ports[0], SUPERUSER, DATABASE, PASSWORD)

    def connect(self, **extra: Any) -> psycopg2.extensions.connection:
        conn: psycopg2.extensions.connection = psycopg2.connect(**self.pg.connect_kwargs(), connect_timeout=5, **extra)
        return conn

    def probe(
        self,
        *,
        on_connect: tuple[str, ...] = (),
        transaction: tuple[str, ...] = ("SELECT 1",),
        driver: Driver = "psycopg2",
        driver_options: str = "pooling",
    ) -> Compatibility:
        request = ProbeRequest(self.mode, POOL_SIZE, on_connect, transaction, driver, driver_options)
        trace = probe(self.target, request, self.connect, self.console.drop_server_connections, self.console.version())
        result = findings(trace)
        self.assert_nothing_left_behind()
        return result

    def assert_nothing_left_behind(self) -> None:
        """No backend but this check's own, no advisory lock; a new client through the pooler finds a session
        with nothing of the probe's in it."""
        direct = self.connect()
        direct.autocommit = True
        try:
            with direct.cursor() as cur:
                deadline = time.monotonic() + 5
                while True:
                    cur.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                        " AND pid <> pg_backend_pid()"
                    )
                    row = cur.fetchone()
                    others = row[0] if row else None
                    if others == 0 or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                assert others == 0
                cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
                assert cur.fetchone() == (0,)
        finally:
            direct.close()
        client = client_connect(self.target, "poolbench-compat-check")
        try:
            with client.cursor() as cur:
                state = snapshot(cur)
            client.rollback()
        finally:
            client.close()
        assert (state.prepared, state.channels, state.temp_tables, state.hold_cursors, state.advisory_locks) == (
            frozenset(),
        ) * 5
        assert set(state.settings) <= {"application_name"}  # what PgBouncer sets for each client itself
        self.console.drop_server_connections()

    def stop(self) -> None:
        self.console.close()
        self.bouncer.stop()


@pytest.fixture(scope="module")
def tx(local_pg: LocalPostgres) -> Iterator[Pooled]:
    pooled = Pooled(local_pg, "transaction")
    yield pooled
    pooled.stop()


@pytest.fixture(scope="module")
def session(local_pg: LocalPostgres) -> Iterator[Pooled]:
    pooled = Pooled(local_pg, "session")
    yield pooled
    pooled.stop()


def kinds(result: Compatibility) -> list[str]:
    return sorted({f.kind for f in result.findings})


#: (case, the statements that cause it, the kinds they cause, their fixed form)
CASES = [
    (
        "set-on-connect",
        {"on_connect": ("SET statement_timeout = '7s'",)},
        ["sessionSettingLeaked", "sessionSettingLost"],
        {"transaction": ("SET LOCAL statement_timeout = '7s'", "SELECT 1")},
    ),
    (
        "set-in-transaction",
        {"transaction": ("SET work_mem = '7MB'", "SELECT 1")},
        ["sessionSettingLeaked"],
        {"transaction": ("SET LOCAL work_mem = '7MB'", "SELECT 1")},
    ),
    (
        "advisory-lock",
        {"transaction": ("SELECT pg_advisory_lock(42)",)},
        ["advisoryLockHeld"],
        {"transaction": ("SELECT pg_advisory_xact_lock(42)",)},
    ),
    (
        "advisory-lock-on-connect",
        {"on_connect": ("SELECT pg_advisory_lock(7)",)},
        ["advisoryLockHeld"],
        {"transaction": ("SELECT pg_advisory_xact_lock(7)",)},
    ),
    (
        "prepare",
        {"on_connect": ("PREPARE q AS SELECT 1",), "transaction": ("EXECUTE q",)},
        ["preparedStatementDuplicated"],
        {"transaction": ("PREPARE q AS SELECT 1", "EXECUTE q", "DEALLOCATE q")},
    ),
    (
        "listen",
        {"on_connect": ("LISTEN jobs",)},
        ["listenLost"],
        {"transaction": ("SELECT pg_notify('jobs', 'done')",)},
    ),
    (
        "listen-in-transaction",
        {"transaction": ("LISTEN jobs",)},
        ["listenLost"],
        {"transaction": ("SELECT pg_notify('jobs', 'done')",)},
    ),
    (
        "temp-table",
        {"transaction": ("CREATE TEMP TABLE scratch (x int)", "INSERT INTO scratch VALUES (1)")},
        ["tempTableShared"],
        {"transaction": ("CREATE TEMP TABLE scratch (x int) ON COMMIT DROP", "INSERT INTO scratch VALUES (1)")},
    ),
    (
        "hold-cursor",
        {"transaction": ("DECLARE c CURSOR WITH HOLD FOR SELECT 1",)},
        ["holdCursorShared"],
        {"transaction": ("DECLARE c CURSOR FOR SELECT 1", "CLOSE c")},
    ),
]


@pytest.mark.parametrize(("case", "bad", "expected", "fixed"), CASES, ids=[c[0] for c in CASES])
def test_each_finding_from_its_statement_none_from_its_fix_none_in_session_mode(
    tx: Pooled, session: Pooled, case: str, bad: dict[str, Any], expected: list[str], fixed: dict[str, Any]
) -> None:
    found = tx.probe(**bad)
    assert kinds(found) == expected, found.findings
    assert found.notes == [], found.notes
    for finding in found.findings:
        assert finding.evidence
        assert finding.fix
        assert "backend" in finding.evidence  # said from the server's side: which backend showed it
        assert finding.statement in bad.get("on_connect", ()) + bad.get("transaction", ())
    fixed_result = tx.probe(**fixed)
    assert fixed_result.findings == [], fixed_result.findings
    assert session.probe(**bad).findings == []


def test_the_advisory_lock_finding_names_who_holds_it(tx: Pooled) -> None:
    (finding,) = tx.probe(transaction=("SELECT pg_advisory_lock(42)",)).findings
    assert "pg_locks: held by backend" in finding.evidence
    assert "application_name 'poolbench-compat-c'" in finding.evidence  # the client now on that backend
    assert "pg_advisory_xact_lock(42)" in finding.fix


def test_psycopg_prepares_after_its_threshold_unless_configured_for_pooling(tx: Pooled, session: Pooled) -> None:
    found = tx.probe(driver="psycopg", driver_options="defaults")
    assert kinds(found) == ["preparedStatementDuplicated", "preparedStatementMissing"]
    assert all("prepare_threshold': None" in f.fix for f in found.findings)
    assert all('"_pg3_' in f.evidence for f in found.findings)  # the driver's own statement names
    assert tx.probe(driver="psycopg", driver_options="pooling").findings == []
    assert session.probe(driver="psycopg", driver_options="defaults").findings == []


def test_asyncpg_unconfigured_names_the_statement_cache_option_configured_finds_nothing(
    tx: Pooled, session: Pooled
) -> None:
    found = tx.probe(driver="asyncpg", driver_options="defaults")
    assert "preparedStatementMissing" in kinds(found)
    for finding in found.findings:
        assert "statement_cache_size" in finding.fix
        assert "prepared_statement_cache_size=0" in finding.fix
        assert "PgBouncer 1.18 cannot track them (max_prepared_statements needs 1.21+)" in finding.fix
        assert "__asyncpg_" in finding.evidence
    assert tx.probe(driver="asyncpg", driver_options="pooling").findings == []
    assert session.probe(driver="asyncpg", driver_options="defaults").findings == []


#: The examples' answers (docs/guides/compatibility.md): tx's findings by kind.
SESSION_STATE_FINDINGS = [
    "advisoryLockHeld",
    "listenLost",
    "sessionSettingLeaked",
    "sessionSettingLeaked",
    "sessionSettingLost",
]
MATRIX = {
    "psycopg2": SESSION_STATE_FINDINGS,
    "psycopg": SESSION_STATE_FINDINGS,  # configured for pooling (driverOptions pooling, the default)
    "asyncpg": sorted([*SESSION_STATE_FINDINGS, "preparedStatementMissing"]),  # driverOptions: defaults
}


@pytest.mark.parametrize("driver", list(MATRIX))
def test_the_drivers_by_modes_examples_through_the_cli(driver: str, tmp_path: Path) -> None:
    """manifests/examples/compat-<driver>.yaml as a user runs it: the findings in the status, the
    comparison's line, and the findings printed under the comparison."""
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "poolbench.cli", "run", str(ROOT / f"manifests/examples/compat-{driver}.yaml")]
        + ["--output", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    status = full_status(json.loads(out.read_text())["status"])
    variants = {v["name"]: v for v in status["variants"]}
    assert variants["direct"]["compatibility"] is None
    assert variants["session"]["compatibility"] == {"poolMode": "session", "findings": [], "notes": []}
    tx = variants["tx"]["compatibility"]
    assert sorted(f["kind"] for f in tx["findings"]) == MATRIX[driver]
    assert tx["notes"] == []
    assert variants["session"]["verdict"]["maxSafeReplicas"] == 4
    count = len(MATRIX[driver])
    assert f"tx: {'4 replicas safe' if driver != 'asyncpg' else 'no step passed'}" in status["comparison"]
    assert status["comparison"].endswith(f", {count} incompatibilities.")
    if driver != "asyncpg":  # asyncpg's load itself fails on its statement cache: no winner at all
        assert status["comparison"].startswith(
            f"tx scales furthest, but: {count} incompatibilities (see its compatibility findings); without any:"
            " session (4 replicas)."
        )
    else:
        missing = next(f for f in tx["findings"] if f["kind"] == "preparedStatementMissing")
        assert "statement_cache_size" in missing["fix"]
    assert f"Compatibility of tx (transaction mode): {count} findings" in proc.stdout
    assert "Compatibility of session (session mode): the probe found nothing" in proc.stdout
    assert "fix: SET LOCAL work_mem" in proc.stdout


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg", "asyncpg"])
def test_the_replicas_run_on_connect_on_each_connection_and_the_transactions_statements_in_order(driver: str) -> None:
    # Each statement of the transaction fails unless what comes before it ran on that connection: the
    # onConnect setting (on every new connection, NullPool: one per transaction), and the transaction's
    # own first statement (a setting local to the transaction).
    doc = make_doc(
        name=f"onconnect-{driver}",
        steps=[2],
        stepTimeoutSeconds=60,
        postgres={"maxConnections": 20},
        workload={
            "driver": driver,
            "threads": 2,
            "iterations": 5,
            "holdSeconds": 0,
            "onError": "count",
            "engine": {"poolClass": "NullPool"},
            "onConnect": ["SET statement_timeout = '5s'"],
            "transaction": [
                "SET LOCAL work_mem = '7MB'",
                "SELECT 1 / (current_setting('statement_timeout') = '5s')::int",
                "SELECT 1 / (current_setting('work_mem') = '7MB')::int",
            ],
        },
    )
    (step,) = runner.run_local(parse_document(doc)).status.variants[0].steps
    assert step.outcome == "Passed", (step.reason, step.first_error)
    assert step.errors.total() == 0
    assert step.queries == 2 * 2 * 5


def test_a_probe_that_cannot_log_in_is_a_note_and_leaves_nothing(tx: Pooled) -> None:
    # A wrong password: PgBouncer refuses the probe's clients. The run goes on; the status says why.
    wrong = ClientTarget(tx.target.host, tx.target.port, SUPERUSER, DATABASE, "not-the-password")
    request = ProbeRequest(
        "transaction", POOL_SIZE, ("SET statement_timeout = '7s'",), ("SELECT 1",), "psycopg", "defaults"
    )
    result = findings(probe(wrong, request, tx.connect, tx.console.drop_server_connections, tx.console.version()))
    assert result.findings == []
    assert result.notes[0].startswith("the probe's clients could not run:"), result.notes
    assert "not-the-password" not in " ".join(result.notes)
    assert result.notes[1].startswith("the psycopg driver's prepared statements were not probed here:"), result.notes
    tx.assert_nothing_left_behind()
