"""The compatibility probe's reasoning: from what the server showed each client, the findings and fixes.

Each trace here is the shape the real probe reads (``tests/test_compat_db.py`` reads them from a real
PostgreSQL behind a real PgBouncer): in transaction mode client B's transaction lands on the backend of
client A's onConnect and client C's on the backend of A's transaction; in session mode each client keeps
its own backend.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from poolbench.core.compat import (
    DriverRun,
    LockHolder,
    ProbeError,
    ProbeTrace,
    SessionState,
    findings,
    incompatibilities,
    parse_version,
    probe_request,
)
from poolbench.core.contracts.replica_env import WorkloadConfig
from poolbench.core.spec import SpecError, parse_spec
from poolbench.core.workload_env import workload_config

pytestmark = pytest.mark.unit

DEFAULTS = {"application_name": "a"}


def trace(
    *,
    on_connect: tuple[str, ...] = (),
    transaction: tuple[str, ...] = ("SELECT 1",),
    connected: dict[str, object] | None = None,
    made: dict[str, object] | None = None,
    session_mode: bool = False,
    kept_after_commit: dict[str, object] | None = None,
) -> ProbeTrace:
    """A's onConnect made ``connected``; A's transaction showed ``made`` before its commit and left
    ``kept_after_commit`` (default: all of ``made``). Transaction mode: B lands on backend 1 (A's
    onConnect), A's transaction and then C on backend 2. Session mode: A keeps backend 1, B has 2, C 3."""
    fresh = SessionState(pid=1, settings=DEFAULTS)
    on_a = replace(fresh, **(connected or {}))  # type: ignore[arg-type]
    if connected and "settings" in connected:
        on_a = replace(on_a, settings={**DEFAULTS, **connected["settings"]})  # type: ignore[dict-item]
    kept = made if kept_after_commit is None else kept_after_commit

    def with_state(base: SessionState, extra: dict[str, object] | None, pid: int) -> SessionState:
        state = replace(base, pid=pid)
        for key, value in (extra or {}).items():
            if key == "settings":
                state = replace(state, settings={**state.settings, **value})  # type: ignore[dict-item]
            else:
                state = replace(state, **{key: getattr(state, key) | value})
        return state

    if session_mode:
        own_next = on_a
        other_first = SessionState(pid=2, settings={"application_name": "b"})
        other_after = SessionState(pid=3, settings={"application_name": "c"})
    else:
        own_next = replace(SessionState(pid=2, settings=DEFAULTS))
        other_first = replace(on_a, settings={**on_a.settings, "application_name": "b"})
        other_after = with_state(SessionState(pid=2, settings={"application_name": "c"}), kept, 2)
    own_done = with_state(own_next, made, own_next.pid)
    return ProbeTrace(
        pool_mode="session" if session_mode else "transaction",
        on_connect=on_connect,
        transaction=transaction,
        fresh=fresh,
        connected=on_a,
        other_first=other_first,
        own_next=own_next,
        own_done=own_done,
        other_after=other_after,
    )


def kinds(t: ProbeTrace) -> list[str]:
    return [f.kind for f in findings(t).findings]


def test_a_set_on_connect_leaks_to_another_client_and_is_lost_for_the_next_transaction() -> None:
    t = trace(on_connect=("SET statement_timeout = '7s'",), connected={"settings": {"statement_timeout": "7s"}})
    result = findings(t)
    assert [f.kind for f in result.findings] == ["sessionSettingLeaked", "sessionSettingLost"]
    leaked, lost = result.findings
    assert leaked.statement == "SET statement_timeout = '7s'"
    assert "client B's transaction then ran on backend 1 and saw statement_timeout = 7s" in leaked.evidence
    assert "its next transaction ran on backend 2" in lost.evidence
    assert "SET LOCAL statement_timeout" in lost.fix
    assert incompatibilities(result) == 2
    # Session mode: B has its own backend, A keeps its setting: nothing.
    assert kinds(replace(t, **_session_of(t))) == []


def _session_of(t: ProbeTrace) -> dict[str, Any]:
    s = trace(on_connect=t.on_connect, connected={"settings": dict(t.connected.settings)}, session_mode=True)
    return {"other_first": s.other_first, "own_next": s.own_next, "own_done": s.own_done, "other_after": s.other_after}


def test_a_set_in_the_transaction_leaks_and_set_local_does_not() -> None:
    leaking = trace(transaction=("SET work_mem = '7MB'", "SELECT 1"), made={"settings": {"work_mem": "7MB"}})
    (finding,) = findings(leaking).findings
    assert finding.kind == "sessionSettingLeaked"
    assert finding.statement == "SET work_mem = '7MB'"
    assert "client C's transaction then ran on backend 2 and saw work_mem = 7MB" in finding.evidence
    assert finding.fix.startswith("SET LOCAL work_mem")
    local = trace(
        transaction=("SET LOCAL work_mem = '7MB'",), made={"settings": {"work_mem": "7MB"}}, kept_after_commit={}
    )
    assert kinds(local) == []


def test_a_session_advisory_lock_held_after_the_transaction_names_its_holder() -> None:
    t = trace(transaction=("SELECT pg_advisory_lock(42)",), made={"advisory_locks": frozenset({"42"})})
    t = replace(t, lock_holders=(LockHolder("42", 2, "poolbench-compat-c", "idle in transaction"),))
    (finding,) = findings(t).findings
    assert finding.kind == "advisoryLockHeld"
    assert "pg_locks: held by backend 2 (idle in transaction, application_name 'poolbench-compat-c')" in (
        finding.evidence
    )
    assert "pg_advisory_xact_lock(42)" in finding.fix
    xact = trace(
        transaction=("SELECT pg_advisory_xact_lock(42)",),
        made={"advisory_locks": frozenset({"42"})},
        kept_after_commit={},
    )
    assert kinds(xact) == []


def test_a_listen_in_the_transaction_is_seen_only_after_the_commit() -> None:
    # LISTEN takes effect at the commit: A's own read before it shows nothing, C finds the channel.
    t = trace(transaction=("LISTEN jobs",), made={}, kept_after_commit={"channels": frozenset({"jobs"})})
    (finding,) = findings(t).findings
    assert finding.kind == "listenLost"
    assert finding.statement == "LISTEN jobs"


def test_state_made_on_connect_is_shared_and_lost() -> None:
    t = trace(
        on_connect=("PREPARE q AS SELECT 1", "CREATE TEMP TABLE scratch (x int)", "LISTEN jobs"),
        connected={
            "prepared": frozenset({"q"}),
            "temp_tables": frozenset({"scratch"}),
            "channels": frozenset({"jobs"}),
        },
    )
    t = replace(t, errors=(ProbeError("A", "EXECUTE q", "26000", 'prepared statement "q" does not exist'),))
    result = findings(t)
    assert [(f.kind, f.statement) for f in result.findings] == [
        ("preparedStatementDuplicated", "PREPARE q AS SELECT 1"),
        ("listenLost", "LISTEN jobs"),
        ("tempTableShared", "CREATE TEMP TABLE scratch (x int)"),
    ]
    assert 'client A\'s statement failed there: prepared statement "q" does not exist' in result.findings[0].evidence
    assert result.notes == []  # the failed EXECUTE is the finding's evidence, not a note
    assert kinds(replace(t, errors=(), **_session_of_state(t))) == []


def _session_of_state(t: ProbeTrace) -> dict[str, Any]:
    return {
        "other_first": SessionState(pid=2),
        "own_next": replace(t.connected),
        "own_done": replace(t.connected),
        "other_after": SessionState(pid=3),
    }


def test_hold_cursors_and_temp_tables_made_in_the_transaction_are_shared() -> None:
    t = trace(
        transaction=("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "CREATE TEMP TABLE t (x int)"),
        made={"hold_cursors": frozenset({"c"}), "temp_tables": frozenset({"t"})},
    )
    assert kinds(t) == ["tempTableShared", "holdCursorShared"]


def driver_trace(errors: tuple[ProbeError, ...], pooling: bool, version: str = "PgBouncer 1.18.0") -> ProbeTrace:
    run = DriverRun(driver="asyncpg", options="defaults", pooling_applied=pooling, statements=7, pids=(5, 5, 6))
    return replace(trace(), driver=replace(run, errors=errors), pooler_version=version)


def test_the_drivers_prepared_statements_name_the_option_and_the_poolers_support() -> None:
    missing = ProbeError("A", "SELECT 1", "26000", 'prepared statement "__asyncpg_stmt_5__" does not exist')
    (finding,) = findings(driver_trace((missing,), pooling=False)).findings
    assert finding.kind == "preparedStatementMissing"
    assert "statement_cache_size" in finding.fix
    assert "prepared_statement_cache_size=0" in finding.fix
    assert "PgBouncer PgBouncer" not in finding.fix
    assert "PgBouncer 1.18 cannot track them (max_prepared_statements needs 1.21+)" in finding.fix
    newer = findings(driver_trace((missing,), pooling=False, version="PgBouncer 1.24.0")).findings[0]
    assert newer.fix.endswith("or set max_prepared_statements on PgBouncer 1.21+")
    assert findings(driver_trace((), pooling=True)).findings == []
    duplicate = ProbeError("B", "SELECT 1", "42P05", 'prepared statement "_pg3_0" already exists')
    assert kinds(driver_trace((duplicate,), pooling=False)) == ["preparedStatementDuplicated"]


def test_an_error_that_is_no_finding_is_a_note() -> None:
    t = replace(trace(), errors=(ProbeError("A", "SELECT x", "42703", 'column "x" does not exist'),))
    result = findings(t)
    assert result.findings == []
    assert result.notes == ['client A\'s statement failed (42703): column "x" does not exist']


def test_versions() -> None:
    assert parse_version("PgBouncer 1.18.0") == (1, 18)
    assert parse_version("1.24.1") == (1, 24)
    assert parse_version("") is None


# -- the spec's fields -----------------------------------------------------------------------------


def test_on_connect_and_transaction_reach_the_replica_and_the_probe() -> None:
    spec = parse_spec(
        {
            "steps": [1],
            "workload": {
                "driver": "asyncpg",
                "driverOptions": "defaults",
                "onConnect": ["SET statement_timeout = '5s'", "LISTEN jobs"],
                "transaction": ["SELECT pg_advisory_lock(1)", "SELECT 1"],
            },
        }
    )
    config = workload_config(spec)
    assert config.statements() == ("SELECT pg_advisory_lock(1)", "SELECT 1")
    assert replace(WorkloadConfig.from_env(config.to_env()), app_name="") == config
    assert config.on_connect == ("SET statement_timeout = '5s'", "LISTEN jobs")
    assert config.driver_options == "defaults"
    pooler = parse_spec({"steps": [1], "variants": [{"name": "tx", "pooler": {"poolMode": "transaction"}}]})
    assert pooler.variants is not None
    assert pooler.variants[0].pooler is not None
    request = probe_request(spec, pooler.variants[0].pooler)
    assert request.on_connect == ("SET statement_timeout = '5s'", "LISTEN jobs")
    assert request.transaction == ("SELECT pg_advisory_lock(1)", "SELECT 1")
    assert (request.driver, request.driver_options, request.pool_mode) == ("asyncpg", "defaults", "transaction")
    # One statement: transaction as a string is today's statement.
    single = workload_config(parse_spec({"steps": [1], "workload": {"transaction": "SELECT 2"}}))
    assert single.statements() == ("SELECT 2",)
    assert single.transaction == ()


@pytest.mark.parametrize(
    ("workload", "message"),
    [
        ({"statement": "SELECT 1", "transaction": "SELECT 2"}, "spec.workload: give statement or transaction"),
        ({"transaction": []}, "spec.workload.transaction: give 1 to 20 statements, not 0"),
        ({"transaction": ["SELECT 1", " "]}, "spec.workload.transaction: statement 2: a statement must not be blank"),
        ({"transaction": 3}, "spec.workload.transaction: must be a statement or a list of statements"),
        ({"onConnect": ["SET x.y = 1", ""]}, "spec.workload.onConnect[1]"),
        ({"driverOptions": "fast"}, "spec.workload.driverOptions"),
    ],
)
def test_bad_statements_name_their_field(workload: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({"steps": [1], "workload": workload})
    assert message in str(err.value)
