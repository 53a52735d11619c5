"""The server's log read into connection events and a timeline (pure). The lines are the servers' own:
written by PostgreSQL 18 (the embedded wheel) and PostgreSQL 15 (Debian) with poolbench's log
settings, in the cases each event stands for."""

# ruff: noqa: E501 - the servers' own lines, verbatim
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from poolbench.core.outcomes import RESERVED_SLOTS, TOO_MANY_CLIENTS
from poolbench.core.results import StepResult
from poolbench.core.serverlog import (
    CLOSED,
    DATABASE_CONNECTION_LIMIT,
    ENDED,
    FAILED,
    MARKER,
    OPENED,
    REFUSED,
    ROLE_CONNECTION_LIMIT,
    SERVER_ENDED,
    LogEvent,
    parse_line,
)
from poolbench.core.timeline import PID_REUSED, ServerTimeline, WindowAccount, iso_utc
from poolbench.core.verdict import apply_server_account, exiting_at_peak, judge_step

PG18 = """\
1796193045.004 [26276] postmaster 00000 LOG:  starting PostgreSQL 18.6 on x86_64-pc-linux-gnu, compiled by gcc (GCC) 14.2.1 20250110 (Red Hat 14.2.1-11), 64-bit
1796193045.080 [26276] postmaster 00000 LOG:  database system is ready to accept connections
1796193045.197 [26288] not initialized 00000 LOG:  connection received: host=127.0.0.1 port=33798
1796193045.198 [26288] client backend 00000 LOG:  connection authenticated: user="postgres" method=trust (/tmp/pgexp/18/data/pg_hba.conf:119)
1796193045.198 [26288] client backend 00000 LOG:  connection authorized: user=postgres database=postgres application_name=admin
1796193045.573 [26288] client backend 00000 LOG:  poolbench log marker m1
1796193045.573 [26288] client backend 00000 CONTEXT:  PL/pgSQL function inline_code_block line 1 at RAISE
1796193045.577 [26289] not initialized 00000 LOG:  connection received: host=127.0.0.1 port=33806
1796193045.578 [26289] client backend 00000 LOG:  connection authenticated: user="postgres" method=trust (/tmp/pgexp/18/data/pg_hba.conf:119)
1796193045.578 [26289] client backend 00000 LOG:  connection authorized: user=postgres database=postgres application_name=my app  name with spaces
1796193045.589 [26289] client backend 00000 LOG:  disconnection: session time: 0:00:00.011 user=postgres database=postgres host=127.0.0.1 port=33806
1796193045.594 [26290] client backend 00000 LOG:  connection authorized: user=postgres database=postgres
1796193045.605 [26290] client backend 00000 LOG:  disconnection: session time: 0:00:00.015 user=postgres database=postgres host=127.0.0.1 port=33818
1796193083.789 [27412] client backend 00000 LOG:  connection authorized: user=app database=postgres application_name=x
1796193083.793 [27413] client backend 00000 LOG:  connection authorized: user=app database=postgres application_name=x
1796193083.793 [27413] client backend 53300 FATAL:  too many connections for role "app"
1796193083.794 [27412] client backend 00000 LOG:  disconnection: session time: 0:00:00.005 user=app database=postgres host=127.0.0.1 port=49460
1796193083.796 [27414] client backend 00000 LOG:  connection authorized: user=plain database=db2 application_name=x
1796193083.805 [27415] client backend 00000 LOG:  connection authorized: user=plain database=db2 application_name=x
1796193083.805 [27415] client backend 53300 FATAL:  too many connections for database "db2"
1796193083.806 [27414] client backend 00000 LOG:  disconnection: session time: 0:00:00.010 user=plain database=db2 host=127.0.0.1 port=49466
1796193083.809 [27416] client backend 00000 LOG:  connection authorized: user=plain database=postgres application_name=filler
1796193083.823 [27420] client backend 00000 LOG:  connection authorized: user=plain database=postgres application_name=filler
1796193083.823 [27420] client backend 53300 FATAL:  remaining connection slots are reserved for roles with privileges of the "pg_use_reserved_connections" role
1796193083.829 [27427] client backend 00000 LOG:  connection authorized: user=resv database=postgres application_name=resv
1796193083.829 [27427] client backend 53300 FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute
1796193083.831 [27428] client backend 00000 LOG:  connection authorized: user=postgres database=postgres application_name=su
1796193083.832 [27429] not initialized 00000 LOG:  connection received: host=127.0.0.1 port=49534
1796193083.832 [27429] client backend 53300 FATAL:  sorry, too many clients already
1796193083.833 [27428] client backend 57P01 FATAL:  terminating connection due to administrator command
1796193083.833 [27428] client backend 00000 LOG:  disconnection: session time: 0:00:00.003 user=postgres database=postgres host=127.0.0.1 port=49532
1796193084.135 [27404] client backend 22012 ERROR:  division by zero
1796193046.020 [26301] client backend 00000 LOG:  connection authorized: user=nobody database=postgres application_name=x
1796193046.020 [26301] client backend 28000 FATAL:  role "nobody" does not exist
1796193046.034 [26302] client backend 00000 LOG:  connection authorized: user=postgres database=nodb application_name=x
1796193046.034 [26302] client backend 3D000 FATAL:  database "nodb" does not exist
1796193046.035 [26276] postmaster 00000 LOG:  client backend (PID 26298) was terminated by signal 9: Killed
1796193046.035 [26276] postmaster 00000 LOG:  terminating any other active server processes
1796193046.041 [26276] postmaster 00000 LOG:  all server processes terminated; reinitializing
1796193048.053 [26309] client backend 57P03 FATAL:  the database system is in recovery mode
1796193051.293 [26374] client backend 57P03 FATAL:  the database system is not yet accepting connections
1796193051.293 [26374] client backend 57P03 DETAIL:  Consistent recovery state has not been yet reached.
1796193052.598 [26276] postmaster 00000 LOG:  received fast shutdown request
1796193052.605 [26276] postmaster 00000 LOG:  background worker "logical replication launcher" (PID 26382) exited with exit code 1
1796193052.713 [26276] postmaster 00000 LOG:  database system is shut down
"""

PG15 = """\
1796193089.697 [27990] not initialized 00000 LOG:  connection received: host=127.0.0.1 port=39754
1796193089.706 [27990] client backend 00000 LOG:  connection authorized: user=postgres database=postgres application_name=my app  name with spaces SSL enabled (protocol=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384, bits=256)
1796193089.709 [27990] client backend 00000 LOG:  disconnection: session time: 0:00:00.016 user=postgres database=postgres host=127.0.0.1 port=39754
1796193089.785 [28005] client backend 00000 LOG:  connection authorized: user=plain database=postgres application_name=filler
1796193089.785 [28005] client backend 53300 FATAL:  remaining connection slots are reserved for non-replication superuser connections
1796193089.797 [28007] client backend 53300 FATAL:  sorry, too many clients already
1796193090.108 [27971] postmaster 00000 LOG:  server process (PID 28004) was terminated by signal 9: Killed
1796193092.120 [27971] postmaster 00000 LOG:  received fast shutdown request
"""


def events(text: str) -> list[LogEvent]:
    return [e for line in text.splitlines() if (e := parse_line(line)) is not None]


def test_postgresql_18_lines() -> None:
    found = [(e.kind, e.pid, e.application_name or e.cause or e.marker) for e in events(PG18)]
    assert found == [
        (SERVER_ENDED, 26276, "starting PostgreSQL"),
        (SERVER_ENDED, 26276, "database system is ready to accept connections"),
        (OPENED, 26288, "admin"),
        (MARKER, 26288, "m1"),
        (OPENED, 26289, "my app  name with spaces"),
        (CLOSED, 26289, ""),
        (OPENED, 26290, ""),
        (CLOSED, 26290, ""),
        (OPENED, 27412, "x"),
        (OPENED, 27413, "x"),
        (REFUSED, 27413, ROLE_CONNECTION_LIMIT),
        (CLOSED, 27412, ""),
        (OPENED, 27414, "x"),
        (OPENED, 27415, "x"),
        (REFUSED, 27415, DATABASE_CONNECTION_LIMIT),
        (CLOSED, 27414, ""),
        (OPENED, 27416, "filler"),
        (OPENED, 27420, "filler"),
        (REFUSED, 27420, RESERVED_SLOTS),
        (OPENED, 27427, "resv"),
        (REFUSED, 27427, RESERVED_SLOTS),
        (OPENED, 27428, "su"),
        (REFUSED, 27429, TOO_MANY_CLIENTS),
        (ENDED, 27428, "57P01"),
        (CLOSED, 27428, ""),
        (OPENED, 26301, "x"),
        (FAILED, 26301, "28000"),
        (OPENED, 26302, "x"),
        (FAILED, 26302, "3D000"),
        (ENDED, 26298, "exited"),
        (SERVER_ENDED, 26276, "terminating any other active server processes"),
        (SERVER_ENDED, 26276, "all server processes terminated; reinitializing"),
        (FAILED, 26309, "57P03"),
        (FAILED, 26374, "57P03"),
        (SERVER_ENDED, 26276, "database system is shut down"),
    ]
    opened = [e for e in events(PG18) if e.kind == OPENED]
    assert (opened[0].user, opened[0].database) == ("postgres", "postgres")
    assert (opened[2].user, opened[2].database, opened[2].application_name) == ("postgres", "postgres", "")
    assert events(PG18)[2].at == 1796193045.198


def test_postgresql_15_lines() -> None:
    found = [(e.kind, e.pid, e.application_name or e.cause) for e in events(PG15)]
    assert found == [
        (OPENED, 27990, "my app  name with spaces"),  # the SSL suffix is not the name's
        (CLOSED, 27990, ""),
        (OPENED, 28005, "filler"),
        (REFUSED, 28005, RESERVED_SLOTS),
        (REFUSED, 28007, TOO_MANY_CLIENTS),
        (ENDED, 28004, "exited"),
    ]


VERBOSE = """\
1796194257.797 [18660] client backend 00000 LOG:  00000: connection authorized: user=postgres database=postgres application_name=v
1796194257.807 [18663] client backend 53300 FATAL:  53300: sorry, too many clients already
1796194257.808 [18660] client backend 00000 LOG:  00000: disconnection: session time: 0:00:00.011 user=postgres database=postgres host=127.0.0.1 port=60246
1796194258.125 [18644] postmaster 00000 LOG:  00000: database system is shut down
"""


def test_verbose_error_messages_read_the_same() -> None:
    """``log_error_verbosity = verbose`` (a user's setting) puts the SQLSTATE before each message."""
    found = [(e.kind, e.pid, e.application_name or e.cause) for e in events(VERBOSE)]
    assert found == [
        (OPENED, 18660, "v"),
        (REFUSED, 18663, TOO_MANY_CLIENTS),
        (CLOSED, 18660, ""),
        (SERVER_ENDED, 18644, "database system is shut down"),
    ]


def test_lines_that_say_nothing_or_are_cut() -> None:
    line = PG18.splitlines()[4]
    for cut in range(len(line)):
        event = parse_line(line[:cut])  # cut anywhere: nothing, or the same session with a shorter name
        assert event is None or (event.kind == OPENED and event.pid == 26288)
    for junk in ["", "\n", "   ", "2026-12-02 06:30:45 UTC [1] LOG:  x", "] [", "1.0 [x] a b c LOG:  y", "x" * 500]:
        assert parse_line(junk) is None
    assert parse_line("continuation of a message:  with a colon") is None


def test_refused_after_authorized_never_opens() -> None:
    timeline = ServerTimeline()
    timeline.add_all([e for e in events(PG18) if 1796193083 <= e.at < 1796193084])  # one run's lines
    window = timeline.window(1796193083.0, 1796193084.0)
    # 27412, 27414 and 27416 opened; 27428 opened and was terminated; 27413/27415/27420/27427 refused.
    assert window.opened == 4
    assert (window.peak, window.peak_at) == (2, 1796193083.831)  # 27416 and 27428
    assert [c.pid for c in timeline.open_at(1796193083.793)] == [27412]  # 27413 refused: never beside it
    assert [(r.pid, r.cause) for r in window.refusals] == [
        (27413, ROLE_CONNECTION_LIMIT),
        (27415, DATABASE_CONNECTION_LIMIT),
        (27420, RESERVED_SLOTS),
        (27427, RESERVED_SLOTS),
        (27429, TOO_MANY_CLIENTS),
    ]
    assert window.first_refusal_at == 1796193083.793
    assert [c.pid for c in window.ghosts] == [27416]


def test_monitor_is_excluded_and_a_crash_ends_everything() -> None:
    timeline = ServerTimeline()
    timeline.exclude(26288, 1796193045.19)  # announced before its authorized line was read
    timeline.add_all(events(PG18))
    assert all(b.pid != 26288 for b in timeline.backends if b.counted)
    assert timeline.markers == {"m1": 1796193045.573}
    assert timeline.open == {}  # the crash and the shutdown ended every backend
    monitor = next(b for b in timeline.backends if b.pid == 26288)
    assert (monitor.closed_at, monitor.ended_by) == (1796193046.035, "terminating any other active server processes")
    assert timeline.window(1796193045.0, 1796193046.0).peak == 1  # 26289, then 26290: never the monitor
    later = ServerTimeline()
    later.exclude(26288, 1796193099.0)  # the same PID, a later session: the one in the log is counted
    later.add_all(events(PG18))
    assert next(b for b in later.backends if b.pid == 26288).counted


def line(at: float, pid: int, message: str, sqlstate: str = "00000", severity: str = "LOG") -> str:
    return f"{at:.3f} [{pid}] client backend {sqlstate} {severity}:  {message}"


def authorized(at: float, pid: int, app: str) -> str:
    return line(at, pid, f"connection authorized: user=u database=d application_name={app}")


def test_poolbenchs_own_sessions_are_left_out_by_name_as_the_reads_leave_them_out() -> None:
    """A restarted server's readiness check and the role setup are poolbench's own admin sessions: the
    account counts the replicas' backends only, the same set the probe's reads count."""
    from poolbench.core.serverlog import OWN_SESSION_NAMES
    from poolbench.db.probe import OTHER_CLIENTS

    texts = [
        authorized(1.000, 1, "pb-x-0"),
        authorized(1.001, 2, "poolbench-admin"),
        authorized(1.002, 3, "poolbench-monitor"),  # a monitor session the monitor did not announce
        authorized(1.003, 4, "pb-x-1"),
        line(1.010, 2, "disconnection: x"),
    ]
    account = account_of(texts, 0.0, 2.0)
    assert account.peak == 2
    assert [c.application_name for c in account.ghosts] == ["pb-x-0", "pb-x-1"]
    assert all(f"'{name}'" in OTHER_CLIENTS for name in OWN_SESSION_NAMES)


def test_a_reused_pid_closes_the_stale_backend() -> None:
    timeline = ServerTimeline()
    for text in (authorized(1.0, 7, "a"), authorized(2.0, 7, "b"), line(3.0, 7, "disconnection: session time: x")):
        event = parse_line(text)
        assert event is not None
        timeline.add(event)
    first, second = timeline.backends
    assert (first.closed_at, first.ended_by, second.closed_at) == (2.0, PID_REUSED, 3.0)
    assert timeline.window(0.0, 4.0).peak == 1


def test_same_millisecond_follows_the_log_order() -> None:
    timeline = ServerTimeline()
    texts = [authorized(1.0, 1, "a"), line(1.5, 1, "disconnection: x"), authorized(1.5, 2, "b")]
    timeline.add_all([e for t in texts if (e := parse_line(t)) is not None])
    assert timeline.window(0.0, 2.0).peak == 1
    timeline = ServerTimeline()
    texts = [authorized(1.0, 1, "a"), authorized(1.5, 2, "b"), line(1.5, 1, "disconnection: x")]
    timeline.add_all([e for t in texts if (e := parse_line(t)) is not None])
    window = timeline.window(0.0, 2.0)
    assert (window.peak, window.peak_at) == (2, 1.5)


def test_ghosts_with_age_and_owner() -> None:
    timeline = ServerTimeline()
    texts = [
        authorized(10.0, 1, "pb-seed-s1-r0"),
        authorized(11.0, 2, "pb-seed-s1-r1"),
        line(12.0, 2, "disconnection: x"),
    ]
    timeline.add_all([e for t in texts if (e := parse_line(t)) is not None])
    window = timeline.window(9.0, 15.0)
    assert [(c.pid, c.application_name, c.age) for c in window.ghosts] == [(1, "pb-seed-s1-r0", 5.0)]
    assert window.points == ((9.0, 0), (10.0, 1), (11.0, 2), (12.0, 1), (15.0, 1))


sessions = st.lists(
    st.tuples(st.integers(0, 400), st.integers(0, 400), st.sampled_from(["ok", "refused", "terminated"])),
    max_size=40,
)


@given(sessions, st.integers(0, 400), st.integers(0, 400))
@settings(max_examples=300, deadline=None)
def test_peak_is_the_most_sessions_open_at_once(raw: list[tuple[int, int, str]], a: int, b: int) -> None:
    """Any interleaving of sessions: the window's peak is the brute-force count at the busiest moment."""
    start, end = min(a, b), max(a, b)
    lines: list[tuple[int, int, str]] = []
    intervals: list[tuple[int, int]] = []
    for pid, (x, y, how) in enumerate(raw, start=100):
        opened, closed = min(x, y), max(x, y) + 1
        # Within one tick the log has the ends first, then the openings: as half-open intervals do.
        lines.append((opened, 2, authorized(opened / 100, pid, f"app {pid}")))
        if how == "refused":
            lines.append((opened, 3, line(opened / 100, pid, "sorry, too many clients already", "53300", "FATAL")))
            continue
        if how == "terminated":
            lines.append((closed, 0, line(closed / 100, pid, "terminating connection", "57P01", "FATAL")))
        lines.append((closed, 1, line(closed / 100, pid, "disconnection: session time: 0:00:00.001")))
        intervals.append((opened, closed))
    timeline = ServerTimeline()
    for _, _, text in sorted(lines):
        event = parse_line(text)
        assert event is not None
        timeline.add(event)
    window = timeline.window(start / 100, end / 100)

    def open_at(t: int) -> int:
        return sum(1 for o, c in intervals if o <= t < c)

    expected = max([open_at(t) for t in range(start, end + 1)], default=0)
    assert window.peak == expected
    assert len(window.ghosts) == open_at(end)
    assert len(window.refusals) == sum(1 for x, y, how in raw if how == "refused" and start <= min(x, y) <= end)


@given(st.floats(-2e9, 4e9, allow_nan=False))
def test_iso_times_match_the_standard_library(epoch: float) -> None:
    from datetime import UTC, datetime, timedelta

    expected = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=round(epoch * 1000))
    assert iso_utc(epoch) == expected.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def account_of(texts: list[str], start: float, end: float, ghosts_at: float | None = None) -> WindowAccount:
    timeline = ServerTimeline()
    timeline.add_all([e for t in texts if (e := parse_line(t)) is not None])
    return timeline.window(start, end, ghosts_at)


def test_backends_still_exiting_explain_a_peak_above_what_a_replica_may_hold() -> None:
    texts = [
        authorized(1.000, 1, "r0"),
        authorized(1.001, 2, "r0"),
        authorized(1.010, 3, "r0"),  # r0's client closed 1 and opened 3; 1 is still exiting
        line(1.012, 1, "disconnection: x"),
        authorized(1.020, 4, "r1"),
        authorized(1.021, 5, "r1"),
        authorized(1.030, 6, "r1"),  # r1 holds 4 for long: not an exiting backend
        line(1.031, 6, "disconnection: x"),
        line(9.000, 4, "disconnection: x"),
    ]
    account = account_of(texts, 0.0, 10.0)
    assert (account.peak, account.peak_at) == (5, 1.030)
    assert exiting_at_peak(account, per_replica=2) == 0  # at 1.030, 1 had already gone
    account = account_of(texts[:4], 0.0, 10.0)
    assert (account.peak, account.peak_at) == (3, 1.010)
    assert exiting_at_peak(account, per_replica=2) == 1
    assert exiting_at_peak(account, per_replica=3) == 0
    lingering = account_of([*texts[:3], line(5.0, 1, "disconnection: x")], 0.0, 10.0)
    assert exiting_at_peak(lingering, per_replica=2) == 0  # open four seconds on: not exiting


def step_with(sampled: int, queries: int = 100, predicted: int = 10) -> StepResult:
    return StepResult(
        replicas=2,
        peak_connections=sampled,
        queries=queries,
        predicted_peak=predicted,
        samples=20,
        usable_connections=99,
    )


def test_the_log_peak_replaces_the_sampled_one_and_a_read_above_it_is_flagged() -> None:
    account = account_of([authorized(1.0, 1, "r0"), authorized(1.1, 2, "r1"), line(1.2, 2, "x")], 0.0, 2.0)
    step = apply_server_account(step_with(sampled=1), account, [(0.5, 0), (1.5, 1)])
    assert (step.peak_connections, step.sampled_peak_connections, step.peak_source) == (2, 1, "serverLog")
    assert step.witness_disagreement is None
    judge_step(step, expected_replicas=2)
    assert step.outcome == "Passed"
    assert "server log; the reads saw at most 1" in (step.reason or "")
    account = account_of([authorized(1.0, 1, "r0"), line(1.1, 1, "disconnection: x")], 0.0, 2.0)
    step = apply_server_account(step_with(sampled=3), account, [(0.5, 0), (1.5, 3)])
    assert "saw 3 connections" in (step.witness_disagreement or "")
    judge_step(step, expected_replicas=2)
    assert step.outcome == "Inconclusive"


def test_without_the_log_the_peak_is_sampled_and_says_why() -> None:
    step = apply_server_account(step_with(sampled=7), "the server's log did not show the monitor's marker")
    assert (step.peak_connections, step.peak_source, step.peak_source_reason) == (
        7,
        "sampled",
        "the server's log did not show the monitor's marker",
    )
    judge_step(step, expected_replicas=2)
    assert step.outcome == "Passed"
    assert "(sampled)" in (step.reason or "")


def test_statements_that_no_witness_saw_are_never_passed() -> None:
    empty = account_of([], 0.0, 2.0)
    step = apply_server_account(step_with(sampled=0), empty, [(0.5, 0), (1.5, 0)])
    judge_step(step, expected_replicas=2)
    assert step.outcome == "Inconclusive"
    assert "100 statements ran but no witness saw a connection" in (step.reason or "")
    step = apply_server_account(step_with(sampled=0), "no log here")
    judge_step(step, expected_replicas=2)
    assert step.outcome == "Inconclusive"
    idle = apply_server_account(step_with(sampled=0, queries=0), empty, [(0.5, 0)])
    judge_step(idle, expected_replicas=2)
    assert idle.outcome == "Passed"  # nothing ran, nothing seen: nothing to doubt


def test_a_slot_handed_on_before_its_disconnection_is_logged_is_no_connection_beyond_the_server() -> None:
    """A full server frees a backend's slot before the backend logs its disconnection, and a waiting
    connection of another replica takes it at once: for a moment the log shows one more than the server
    holds. The peak is what the server can hold, the other counted as exiting; one that does not end is
    no such thing, and is flagged."""
    full = [authorized(1.000 + i / 1000, i + 1, f"r{i % 3}") for i in range(3)]
    handed_on = [*full, authorized(1.100, 9, "r0"), line(1.102, 2, "disconnection: x")]
    step = apply_server_account(
        step_with(sampled=3).model_copy(update={"usable_connections": 3}), account_of(handed_on, 0.0, 2.0)
    )
    assert (step.peak_connections, step.exiting_at_peak, step.witness_disagreement) == (3, 1, None)
    judge_step(step, expected_replicas=2)
    assert step.outcome != "Inconclusive"
    lingering = [*full, authorized(1.100, 9, "r0"), line(3.000, 2, "disconnection: x")]
    step = apply_server_account(
        step_with(sampled=3).model_copy(update={"usable_connections": 3}), account_of(lingering, 0.0, 4.0)
    )
    assert step.peak_connections == 4
    assert "more than the 3 the server lets the workload hold" in (step.witness_disagreement or "")
