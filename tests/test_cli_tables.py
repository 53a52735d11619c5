"""The CLI's tables and the verdict's quoted error text: what a user reads, whole and never cut
inside a word."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from poolbench import cli, tables
from poolbench.core.results import (
    BenchmarkStatus,
    ErrorCounts,
    PoolerStepResult,
    StepResult,
    VariantStatus,
    Verdict,
)
from poolbench.core.spec import PoolerSpec
from poolbench.core.verdict import failure_cause
from poolbench.core.words import clipped


def pooled_status() -> dict[str, Any]:
    pooler = PoolerSpec(
        pool_mode="transaction", default_pool_size=3, reserve_pool_size=1, max_client_conn=6, replicas=2
    )
    steps = [
        StepResult(replicas=2, pooler=PoolerStepResult(), outcome="Passed", predicted_peak=8, peak_connections=6),
        StepResult(
            replicas=3,
            pooler=PoolerStepResult(),
            outcome="Failed",
            predicted_peak=8,
            peak_connections=6,
            errors=ErrorCounts(pooler_max_client_conn=31, too_many_clients=3),
            leftover_backends=3,
            first_error_class="poolerMaxClientConn",
        ),
    ]
    verdict = Verdict(max_safe_replicas=2, first_failing_replicas=3)
    status = BenchmarkStatus(
        max_connections=14, variants=[VariantStatus(name="tx", pooler=pooler, steps=steps, verdict=verdict)]
    )
    return status.full_json()


@pytest.mark.parametrize("width", [200, 160, 130])
def test_the_errors_column_shows_each_class_whole(width: int) -> None:
    status = pooled_status()
    console = Console(width=width, record=True)
    console.print(tables.results_table(status, status["variants"][0]))
    text = console.export_text()
    # One class per line, each whole (a name cut to "poolerMa…" says nothing).
    assert "poolerMaxClientConn 31" in text, text
    assert "tooManyClients 3" in text, text
    assert "Failed" in text, text
    assert "(3 leftovers)" in text, text


def test_the_comparison_names_reserve_pool_and_instances() -> None:
    console = Console(width=200, record=True)
    console.print(tables.comparison_table(pooled_status()))
    text = console.export_text()
    assert "PgBouncer transaction, pool 3+1 × 2 instances, QueuePool" in text
    assert "3 (poolerMaxClientConn)" in text


def test_a_measured_rollout_reads_as_old_replicas_and_surge_pods() -> None:
    # 2 replicas passed at rest; the rolling update ran them with 1 surge pod (3 pods) and passed too.
    steps = [
        StepResult(replicas=2, outcome="Passed", predicted_peak=6, peak_connections=6),
        StepResult(replicas=3, rollout_from=2, outcome="Passed", predicted_peak=9, peak_connections=9),
    ]
    steps[0].latency_ms.p95, steps[1].latency_ms.p95 = 20.0, 35.0
    verdict = Verdict(max_safe_replicas=2)
    status = BenchmarkStatus(
        max_connections=14, verdict=verdict, variants=[VariantStatus(name="direct", steps=steps, verdict=verdict)]
    ).full_json()
    console = Console(width=200, record=True)
    console.print(tables.results_table(status, status["variants"][0]))
    rows = [line for line in console.export_text().splitlines() if "Passed" in line]
    assert "2 + 1 surge" in rows[1]
    assert "2 + 1 surge" not in rows[0]
    console = Console(width=200, record=True)
    console.print(tables.comparison_table(status))
    text = console.export_text()  # the largest passing step at rest is the max safe count's, not the rollout's
    assert "20 ms at 2" in text
    assert "35 ms" not in text


def test_the_comparison_names_the_limit_that_failed_a_step() -> None:
    # No failed attempt: the step failed on its p95 latency limit, which the column names.
    steps = [
        StepResult(replicas=1, outcome="Failed", reason="latency p95 61.887 ms exceeds limits.maxLatencyP95Ms 40 ms")
    ]
    verdict = Verdict(first_failing_replicas=1)
    status = BenchmarkStatus(
        max_connections=20, verdict=verdict, variants=[VariantStatus(name="direct", steps=steps, verdict=verdict)]
    ).full_json()
    console = Console(width=200, record=True)
    console.print(tables.comparison_table(status))
    assert "1 (limits.maxLatencyP95Ms)" in console.export_text()


@pytest.mark.parametrize(
    "message",
    [
        # libpq (psycopg2) and psycopg 3, which opens the same text with its own prefix
        'connection to server at "127.0.0.1", port 5432 failed: FATAL: sorry, too many clients already',
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL: sorry, too many clients'
        " already",
        'connection failed: connection to server on socket "/tmp/.s.PGSQL.5432" failed: FATAL: sorry, too many'
        " clients already",
    ],
)
def test_the_cause_drops_the_drivers_connection_prefix(message: str) -> None:
    step = StepResult(
        replicas=3, outcome="Failed", first_error=f"pb-x-s1-r0: {message}", first_error_class="tooManyClients"
    )
    assert failure_cause(step) == "tooManyClients (FATAL: sorry, too many clients already)"


def test_a_long_error_is_cut_at_a_word_boundary() -> None:
    text = "FATAL: " + " ".join(f"word{i:02d}" for i in range(40))  # 7 + 40 × 7 − 1 characters
    cut = clipped(text, 50)
    assert cut == "FATAL: word00 word01 word02 word03 word04 word05 …"
    assert len(cut) <= 50 + 2
    assert clipped("short text", 50) == "short text"
    assert clipped("ERROR: x\nDETAIL: y") == "ERROR: x DETAIL: y"  # one line
    step = StepResult(replicas=3, outcome="Failed", first_error=f"r0: {text}", first_error_class="other")
    cause = failure_cause(step)
    assert cause.endswith(" …)")
    assert cause.removeprefix("other (").removesuffix(" …)") in text


def test_a_table_names_its_variant_only_when_the_status_compares_variants() -> None:
    steps = [StepResult(replicas=1, outcome="Passed", predicted_peak=3, peak_connections=3)]
    plain = BenchmarkStatus(max_connections=20, variants=[VariantStatus(name="direct", steps=steps)]).full_json()
    named = {**plain, "comparison": "Scales furthest: direct (1 replica). direct: 1 replica safe, peak 3."}
    for status, title in (
        (plain, "PoolBenchmark results (max_connections 20)"),
        (named, "variant direct: direct, QueuePool (max_connections 20)"),
    ):
        console = Console(width=200, record=True)
        console.print(tables.results_table(status, status["variants"][0]))
        assert title in console.export_text()


def test_the_peak_names_its_source_and_the_sampled_one_beside_it() -> None:
    steps = [
        StepResult(
            replicas=1,
            outcome="Passed",
            predicted_peak=12,
            peak_connections=12,
            peak_source="serverLog",
            sampled_peak_connections=4,
            idle_at_end=3,
            server_ghosts=2,
        ),
        StepResult(replicas=2, outcome="Passed", predicted_peak=24, peak_connections=20, sampled_peak_connections=20),
    ]
    status = BenchmarkStatus(max_connections=30, variants=[VariantStatus(name="direct", steps=steps)]).full_json()
    console = Console(width=200, record=True)
    console.print(tables.results_table(status, status["variants"][0]))
    text = console.export_text()
    assert "12 (log)" in text
    assert "4 sampled" in text
    assert "20 (sampled)" in text
    assert "(log 2)" in text  # the log's ghosts beside the reads' when they differ
    assert "pools" not in text  # no replica reported its pool: no third witness


def test_the_pools_own_count_stands_under_the_exact_peak() -> None:
    steps = [
        StepResult(
            replicas=3,
            outcome="Passed",
            predicted_peak=15,
            peak_connections=15,
            peak_source="serverLog",
            sampled_peak_connections=15,
            client_peak_connections=15,
            client_peak_exact=True,
        ),
        StepResult(
            replicas=3,
            outcome="Passed",
            predicted_peak=15,
            peak_connections=17,
            peak_source="serverLog",
            sampled_peak_connections=9,
            client_peak_connections=12,
            client_peak_exact=False,
        ),
    ]
    status = BenchmarkStatus(max_connections=30, variants=[VariantStatus(name="direct", steps=steps)]).full_json()
    console = Console(width=200, record=True)
    console.print(tables.results_table(status, status["variants"][0]))
    cells = [line.split("│")[4].strip() for line in console.export_text().splitlines() if line.count("│") > 5]
    assert cells == ["15 (log)", "15 pools", "17 (log)", "9 sampled", "≤ 12 pools"]
    pooled = pooled_status()
    pooled["variants"][0]["steps"][0].update(clientPeakConnections=6, clientPeakExact=True)
    console = Console(width=200, record=True)
    console.print(tables.results_table(pooled, pooled["variants"][0]))
    assert "6 pools" in console.export_text()  # beside the pooler's clients, not the server's backends


def test_the_output_carries_each_steps_exact_timeline_and_refusals() -> None:
    from poolbench.core.serverlog import parse_line
    from poolbench.core.timeline import ServerTimeline
    from poolbench.local.runner import LocalResult

    timeline = ServerTimeline()
    for text in (
        "100.000 [1] client backend 00000 LOG:  connection authorized: user=u database=d application_name=r0",
        "100.250 [2] client backend 53300 FATAL:  sorry, too many clients already",
        "100.500 [1] client backend 00000 LOG:  disconnection: session time: 0:00:00.500",
    ):
        event = parse_line(text)
        assert event is not None
        timeline.add(event)
    account = timeline.window(99.0, 101.0).shifted(90.0)  # the server's epoch onto the samples' clock
    result = LocalResult(status=BenchmarkStatus(), server_accounts=[account])
    assert cli.server_timeline_rows(result) == [
        {
            "start": 9.0,
            "end": 11.0,
            "open": [[9.0, 0], [10.0, 1], [10.5, 0], [11.0, 0]],
            "refusals": [{"t": 10.25, "class": "tooManyClients", "pid": 2}],
        }
    ]
    assert account.iso(10.25) == "1970-01-01T00:01:40.250Z"
