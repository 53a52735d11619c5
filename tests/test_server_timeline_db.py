"""The server's own account of its connections, read from the log of a real PostgreSQL, against cases
whose answer the pool arithmetic knows: a burst between two reads, the seed's refused scale-up, and a
NullPool's churn."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml

from poolbench.core.results import StepResult
from poolbench.core.spec import parse_document
from poolbench.core.timeline import WindowAccount
from poolbench.core.verdict import apply_server_account, most_open
from poolbench.db.monitor import Monitor
from poolbench.local import runner
from poolbench.local.embedded import LocalPostgres
from poolbench.local.logtail import LogFile
from tests.conftest import make_doc

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parent.parent
BURST = 12  # connections opened at once
BURST_WIDTH_S = 0.005  # how long all of them stay open together
INTERVAL_S = 0.2


def burst(pg: LocalPostgres, name: str) -> None:
    """``BURST`` connections opened at once; once every one is open, held ``BURST_WIDTH_S``, then closed."""
    conns: list[Any] = [None] * BURST
    start = threading.Barrier(BURST + 1)

    def connect(i: int) -> None:
        start.wait()
        conns[i] = psycopg2.connect(**pg.connect_kwargs(), application_name=name)

    threads = [threading.Thread(target=connect, args=(i,)) for i in range(BURST)]
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join()
    time.sleep(BURST_WIDTH_S)
    for c in conns:
        c.close()


@pytest.mark.serial  # a burst is placed between two reads of the sampler: a busy machine may delay either
def test_a_burst_between_two_reads_is_exact_in_the_log_and_missed_by_the_reads(local_pg: LocalPostgres) -> None:
    t0 = time.monotonic()
    monitor = Monitor(
        lambda **kw: psycopg2.connect(**local_pg.connect_kwargs(), **kw), INTERVAL_S, t0, log=LogFile(local_pg.log_path)
    )
    monitor.start()
    try:
        missed = None
        for attempt in range(8):
            reads = monitor.samples()
            while not reads:  # just after a read: the next one is INTERVAL_S away
                time.sleep(0.002)
                reads = monitor.samples()
            began = time.monotonic() - t0
            burst(local_pg, f"burst-{attempt}")
            time.sleep(INTERVAL_S)  # the reads around the burst arrive
            reads = [s for s in monitor.samples() if s.ok]
            ended = time.monotonic() - t0
            account = monitor.server_account(began, ended)
            assert isinstance(account, WindowAccount), account
            # Exactly the burst: every connection open at once, the monitor's own session left out.
            assert account.peak == BURST
            assert account.opened == BURST
            assert account.ghosts == ()
            assert account.refusals == ()
            for read in reads:  # no read sees more than the log shows around it
                assert read.total <= most_open(account.points, read.t - 0.25, read.t + 0.25)
            sampled = max((s.total for s in reads if began <= s.t <= ended), default=0)
            if sampled < BURST:
                missed = (account, sampled, [(s.t, s.total) for s in reads])
                break
        assert missed is not None, "every burst overlapped a read"
        account, sampled, read_list = missed
        step = apply_server_account(StepResult(replicas=1, peak_connections=sampled), account, read_list)
        assert (step.peak_source, step.peak_connections, step.sampled_peak_connections) == ("serverLog", BURST, sampled)
        assert step.witness_disagreement is None  # the reads saw less: the burst fell between them
    finally:
        monitor.stop()


def test_poolbenchs_own_sessions_are_left_out_by_both_witnesses(local_pg: LocalPostgres) -> None:
    """An admin session (a readiness check, the role setup) open beside one workload connection: the
    log's account and the reads both count the workload's one, so a read never shows more than the log."""
    from poolbench.core.serverlog import ADMIN_NAME
    from poolbench.db.sessions import admin_session

    t0 = time.monotonic()

    def connect(**kw: Any) -> Any:
        return psycopg2.connect(**local_pg.connect_kwargs(), **kw)

    monitor = Monitor(connect, 0.05, t0, log=LogFile(local_pg.log_path))
    monitor.start()
    try:
        monitor.samples()
        began = time.monotonic() - t0
        admin = admin_session(connect, ADMIN_NAME)
        workload = connect(application_name="pb-own-0")
        opened = time.monotonic() - t0
        try:
            reads: list[tuple[float, int]] = []
            while len(reads) < 3:  # reads taken while both are open
                reads += [(s.t, s.total) for s in monitor.samples() if s.ok and s.t > opened]
                time.sleep(0.05)
        finally:
            workload.close()
            admin.close()
        ended = time.monotonic() - t0
        account = monitor.server_account(began, ended)
        assert isinstance(account, WindowAccount), account
        assert account.peak == 1
        assert [total for _, total in reads] == [1] * len(reads)
        step = apply_server_account(StepResult(replicas=1, peak_connections=1), account, reads)
        assert step.witness_disagreement is None
    finally:
        monitor.stop()


def test_the_seeds_refused_scale_up_counted_by_the_server_as_by_the_workload() -> None:
    doc = yaml.safe_load((ROOT / "manifests/examples/seed.yaml").read_text())
    doc["spec"]["steps"] = [10]
    result = runner.run_local(parse_document(doc))
    step = result.status.variants[0].steps[0]
    assert step.peak_source == "serverLog", step.peak_source_reason
    # The superuser may take every slot but the monitor's: the server filled them all, then refused.
    assert step.peak_connections == step.usable_connections == 99
    assert step.sampled_peak_connections <= step.peak_connections
    assert step.errors.too_many_clients > 0
    assert step.refusals == step.errors.too_many_clients
    assert step.refusals_by_class == {"tooManyClients": step.refusals}
    assert step.first_refusal_at is not None
    (account,) = result.server_accounts
    first = account.first_refusal_at
    assert first is not None
    # When the first refusal came, the usable slots were full (backends still starting hold slots
    # the log counts only once they are authorized, a few milliseconds later).
    assert most_open(account.points, first, first + 0.05) == step.usable_connections
    assert step.witness_disagreement is None
    assert step.outcome == "Failed"
    # The ghosts: the surviving replicas' idle pools, exactly, each named by its replica.
    assert step.server_ghosts == step.idle_at_end
    assert all(g.replica.startswith("pb-seed-s1-r") for g in step.ghosts())


def test_nullpool_churn_peaks_at_replicas_times_threads_plus_backends_still_exiting() -> None:
    replicas, threads = 3, 4
    doc = make_doc(
        name="churn",
        steps=[replicas],
        stepTimeoutSeconds=60,
        sampling={"intervalMs": 100},
        postgres={"maxConnections": 60},
        workload={
            "threads": threads,
            "iterations": 30,
            "holdSeconds": 0,
            "statement": "SELECT pg_sleep(0.02)",
            "engine": {"poolClass": "NullPool"},
        },
    )
    result = runner.run_local(parse_document(doc))
    step = result.status.variants[0].steps[0]
    assert step.peak_source == "serverLog", step.peak_source_reason
    assert step.errors.total() == 0
    assert step.queries == replicas * threads * 30
    assert step.predicted_peak == replicas * threads
    (account,) = result.server_accounts
    assert account.opened == replicas * threads * 30  # NullPool: a connection per statement
    # Beyond replicas × threads, only backends whose replica had already opened a newer one: a
    # NullPool closes a connection and opens the next at once, and the server logs the old
    # backend's end only once it has exited.
    assert step.peak_connections - step.exiting_at_peak <= replicas * threads
    assert step.peak_connections >= step.sampled_peak_connections
    assert step.witness_disagreement is None
    assert step.outcome == "Passed", step.reason


def small_run(name: str, settings: dict[str, str] | None = None, **workload: Any) -> runner.LocalResult:
    doc = make_doc(
        name=name,
        steps=[2],
        stepTimeoutSeconds=60,
        stopOnFailure=False,
        sampling={"intervalMs": 50},
        postgres={"maxConnections": 30, "settings": settings or {}},
        workload={
            "threads": 2,
            "iterations": 2,
            "holdSeconds": 1,
            "statement": "SELECT pg_sleep(0.3)",
            "engine": {"poolSize": 2, "maxOverflow": 0},
            **workload,
        },
    )
    return runner.run_local(parse_document(doc))


def test_a_server_that_logs_less_falls_back_to_the_sampled_peak_and_says_why() -> None:
    result = small_run("quiet", {"log_min_messages": "fatal"})  # no connection line, no marker
    (step,) = result.status.variants[0].steps
    assert step.peak_source == "sampled"
    assert "did not show the monitor's marker" in (step.peak_source_reason or "")
    assert step.peak_connections == step.sampled_peak_connections == 4
    assert step.server_ghosts is None
    assert step.outcome == "Passed", step.reason
    assert "(sampled)" in (step.reason or "")


def test_ghosts_exactly_with_their_owners_and_ages() -> None:
    result = small_run("ghosts")
    (step,) = result.status.variants[0].steps
    assert step.peak_source == "serverLog", step.peak_source_reason
    assert step.peak_connections == step.predicted_peak == 4
    # Each replica's pool keeps its 2 connections after the work: 4 ghosts, 2 per replica, each
    # open since the work began (two 0.3 s statements per thread: at least 0.6 s old at its end).
    assert step.server_ghosts == step.idle_at_end == step.predicted_idle == 4
    owners = sorted(g.replica for g in step.ghosts())
    assert owners == ["pb-ghosts-s1-r0"] * 2 + ["pb-ghosts-s1-r1"] * 2
    assert all(g.age_seconds >= 0.6 for g in step.ghosts())
    assert step.refusals == 0
    assert step.first_refusal_at is None


def test_a_server_killed_mid_step_ends_every_backend_in_the_account() -> None:
    """SIGKILL leaves no line for the backends it kills; the restarted server's first lines end them,
    so the replicas' reconnections never stack on the dead backends."""
    import os
    import signal

    from poolbench.core.steploop import Progress

    doc = make_doc(
        name="pgkill",
        steps=[2],
        stepTimeoutSeconds=60,
        sampling={"intervalMs": 50},
        postgres={"maxConnections": 30},
        workload={
            "threads": 3,
            "durationSeconds": 4,
            "holdSeconds": 1,
            "onError": "count",
            "statement": "SELECT pg_sleep(0.05)",
        },
    )
    killed: list[float] = []

    def progress(p: Progress) -> None:
        if p.step_elapsed > 1.5 and not killed and local.pg and local.pg.pid:
            os.killpg(local.pg.pid, signal.SIGKILL)
            killed.append(p.step_elapsed)

    local = runner.LocalRunner(parse_document(doc), progress)
    result = local.execute()
    assert killed
    (step,) = result.status.variants[0].steps
    assert step.database_restarts == 1
    assert step.peak_source == "serverLog", step.peak_source_reason
    (account,) = result.server_accounts
    assert [why for _, why in account.server_ends][:1] == ["starting PostgreSQL"]
    restarted = account.server_ends[0][0]
    assert most_open(account.points, restarted, restarted) == 0  # whatever the old server held ended there
    # The replicas' connections at the peak, and nothing else: the restarted server's readiness check
    # (poolbench's own admin session) is left out by the log's account as by the reads.
    workload = [c for c in account.at_peak if c.application_name.startswith("pb-pgkill-")]
    assert len(workload) == len(account.at_peak) == step.peak_connections == step.predicted_peak == 6
    assert all(not c.application_name.startswith("poolbench-") for c in account.ghosts)


def test_an_app_roles_refusals_by_class_are_the_workloads_own() -> None:
    """A normal role meets the reserved slots first; a storm of connects also meets the full server.
    The server's wording tells the two apart as the workload's classes do, attempt for attempt."""
    doc = yaml.safe_load((ROOT / "manifests/examples/seed.yaml").read_text())
    doc["spec"]["steps"] = [10]
    doc["spec"]["workload"].update({"role": "app", "onError": "count", "iterations": 10})
    result = runner.run_local(parse_document(doc))
    step = result.status.variants[0].steps[0]
    assert step.peak_source == "serverLog", step.peak_source_reason
    assert step.peak_connections == step.usable_connections == 100 - 3 - 1
    assert step.errors.reserved_slots > 0
    assert step.refusals_by_class.get("reservedSlots", 0) == step.errors.reserved_slots
    assert step.refusals_by_class.get("tooManyClients", 0) == step.errors.too_many_clients
    assert step.refusals == step.errors.reserved_slots + step.errors.too_many_clients
    assert step.witness_disagreement is None
