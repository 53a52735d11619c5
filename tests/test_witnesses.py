"""Three witnesses of a step's connections side by side (pure): the server's log, the reads and the pools'
own events. Where one bounds the other, a disagreement beyond what timing explains makes the step
Inconclusive, saying the numbers; a step whose statements ran unseen by every witness is never Passed."""

from __future__ import annotations

from typing import Any

from poolbench.core.results import PoolerStepResult, StepResult
from poolbench.core.serverlog import parse_line
from poolbench.core.timeline import ServerTimeline
from poolbench.core.verdict import (
    apply_client_witness,
    apply_server_account,
    client_witness_disagreement,
    judge_step,
)


def step(**fields: Any) -> StepResult:
    """A direct step of 3 replicas that may open 5 each, judged from the server's log."""
    base: dict[str, Any] = {
        "replicas": 3,
        "predicted_peak": 15,
        "usable_connections": 96,
        "queries": 300,
        "samples": 20,
        "peak_source": "serverLog",
        "peak_connections": 15,
        "sampled_peak_connections": 15,
        "client_peak_connections": 15,
        "client_peak_exact": True,
        "client_connects": 15,
    }
    return StepResult(**(base | fields))


def judged(result: StepResult) -> StepResult:
    return judge_step(apply_client_witness(result), expected_replicas=result.replicas)


def test_three_witnesses_that_agree_pass() -> None:
    result = judged(step())
    assert result.witness_disagreement is None
    assert result.outcome == "Passed", result.reason


def test_an_exact_client_peak_above_the_servers_is_flagged_with_the_three_numbers() -> None:
    result = judged(step(peak_connections=12, sampled_peak_connections=11, client_peak_connections=13))
    assert result.outcome == "Inconclusive"
    assert result.witness_disagreement == (
        "the pools' own events counted 13 connections open at once, more than the server's log shows at any"
        " moment (12; the reads saw at most 11)"
    )
    assert "the witnesses disagree: the pools' own events counted 13" in (result.reason or "")


def test_connections_the_server_ended_itself_are_still_counted_by_the_pools() -> None:
    """An idle connection the server ended (idle_session_timeout, a crash) stays in its pool until it is used:
    the pools may count up to that many more than the server holds."""
    assert (
        client_witness_disagreement(step(peak_connections=12, client_peak_connections=14, server_ended_connections=2))
        is None
    )
    found = client_witness_disagreement(
        step(peak_connections=12, client_peak_connections=15, server_ended_connections=2)
    )
    assert "(12, and 2 it ended itself; the reads saw at most 15)" in (found or "")


def test_a_coarsened_client_peak_is_a_bound_flagged_only_against_a_server_that_saw_nothing() -> None:
    assert (
        client_witness_disagreement(step(peak_connections=12, client_peak_connections=14, client_peak_exact=False))
        is None
    )
    result = judged(
        step(peak_connections=0, sampled_peak_connections=0, client_peak_connections=3, client_peak_exact=False)
    )
    assert result.outcome == "Inconclusive"
    assert "counted connections (at most 3) open at once, more than the server's log shows at any moment (0" in (
        result.reason or ""
    )


def test_the_server_above_the_pools_by_what_is_under_way_is_normal() -> None:
    """Connects not yet returned to a pool and closes still exiting: the server holds them, the pools do not
    count them. NullPool churn: the pools counted 9, the server 17 of which 2 still exiting: within 15 + 2."""
    result = judged(step(peak_connections=17, exiting_at_peak=2, client_peak_connections=9, client_connects=900))
    assert result.witness_disagreement is None
    assert result.outcome == "Passed", result.reason


def test_the_server_above_what_the_pools_may_hold_and_open_is_flagged() -> None:
    result = judged(
        step(peak_connections=17, sampled_peak_connections=16, exiting_at_peak=1, client_peak_connections=15)
    )
    assert result.outcome == "Inconclusive"
    assert result.witness_disagreement == (
        "the server's log shows 17 connections open at once, 1 of them still exiting, 1 more than the pools may"
        " hold and open at once (15), while their own events counted at most 15 (the reads saw at most 16):"
        " 1 connection was no pool's"
    )


def test_pools_above_the_arithmetic_are_no_witness_disagreement() -> None:
    """The pools held more than the arithmetic lets them: their limit is not the arithmetic's, so what they
    had under way is not bounded by it (the prediction is what is wrong; the peak says so)."""
    assert client_witness_disagreement(step(peak_connections=18, client_peak_connections=17)) is None


def test_not_compared_without_the_log_without_every_report_or_after_a_crash() -> None:
    high = {"peak_connections": 10, "client_peak_connections": 13}
    assert client_witness_disagreement(step(**high, peak_source="sampled")) is None
    assert client_witness_disagreement(step(**(high | {"client_peak_connections": None}))) is None
    for stopped in ({"crashed_replicas": 1}, {"restarts": 1}, {"timed_out": True}):
        assert client_witness_disagreement(step(**high, **stopped)) is None
    pooled = step(**high, pooler=PoolerStepResult(client_peak_connections=15, predicted_client_peak=15))
    assert client_witness_disagreement(pooled) is None


def test_a_client_flag_adds_to_a_reads_flag() -> None:
    result = step(peak_connections=12, client_peak_connections=13, witness_disagreement="a read at 1.00 s …")
    apply_client_witness(result)
    assert (result.witness_disagreement or "").startswith("a read at 1.00 s …; the pools' own events counted 13")


def test_statements_no_witness_saw_count_the_pools_too() -> None:
    unseen = judged(step(peak_connections=0, sampled_peak_connections=0, client_peak_connections=0))
    assert unseen.outcome == "Inconclusive"
    assert (
        "300 statements ran but no witness saw a connection (the server's log shows none, no read did and the"
        " pools' own events counted none)" in (unseen.reason or "")
    )
    sampled = judged(
        step(peak_source="sampled", peak_connections=0, sampled_peak_connections=0, client_peak_connections=0)
    )
    assert sampled.outcome == "Inconclusive"
    assert "no read did and the pools' own events counted none" in (sampled.reason or "")
    # The pools saw their connections though the reads fell between them: the work was seen, and said.
    seen = judged(
        step(peak_source="sampled", peak_connections=0, sampled_peak_connections=0, client_peak_connections=4)
    )
    assert seen.outcome == "Passed"
    assert "peak 0 of 96 usable connections (sampled; the pools' own events counted 4 at once)" in (seen.reason or "")


def test_the_servers_account_gives_the_connections_it_ended_itself() -> None:
    lines = [
        "1.000 [1] client backend 00000 LOG:  connection authorized: user=u database=d application_name=r0",
        "1.001 [2] client backend 00000 LOG:  connection authorized: user=u database=d application_name=r0",
        "1.002 [3] client backend 00000 LOG:  connection authorized: user=u database=d application_name=r1",
        "1.500 [1] client backend 57P05 FATAL:  terminating connection due to idle-session timeout",
        "1.600 [2] client backend 00000 LOG:  disconnection: session time: 0:00:00.599 user=u database=d",
        "1.700 [9] postmaster 00000 LOG:  server process (PID 3) was terminated by signal 9: Killed",
    ]
    timeline = ServerTimeline()
    timeline.add_all([e for text in lines if (e := parse_line(text)) is not None])
    account = timeline.window(0.0, 2.0)
    assert (account.peak, account.ended_by_server) == (3, 2)  # the timeout and the killed one; not 2's own close
    result = apply_server_account(step(client_peak_connections=None), account)
    assert result.server_ended_connections == 2
