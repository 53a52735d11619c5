"""The results shape agrees with the outcome classes it counts."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from poolbench.core.benchmark import full_status, status_from_resource
from poolbench.core.crd import PRINTER_COLUMNS
from poolbench.core.histogram import Histogram
from poolbench.core.outcomes import OK, OUTCOMES
from poolbench.core.results import (
    ERROR_CLASSES,
    STEP_SUMMARY_FIELDS,
    BenchmarkStatus,
    ErrorCounts,
    GhostConnection,
    HistogramCounts,
    StepResult,
    VariantStatus,
    Verdict,
    join_saved,
    join_status,
    lean_status,
    parse_ghosts,
)
from poolbench.core.words import short_verdict_words


def test_error_counts_have_one_field_per_error_class() -> None:
    assert tuple(o for o in OUTCOMES if o != OK) == ERROR_CLASSES
    assert set(ErrorCounts().to_json()) == set(ERROR_CLASSES)


def test_error_counts_add_and_rank_the_classes() -> None:
    counts = ErrorCounts()
    counts.add({"ok": 9, "reservedSlots": 2, "other": 1, "unknown": 5})
    assert counts.total() == 3
    assert counts.first_class() == "reservedSlots"


def test_a_ghost_connection_is_one_line_that_reads_back() -> None:
    ghost = GhostConnection(pid=4242, replica="pb-seed-s1-r0", age_seconds=12.5)
    assert ghost.to_text() == "4242 pb-seed-s1-r0 12.5s"
    assert GhostConnection.from_text(ghost.to_text()) == ghost
    spaced = GhostConnection(pid=7, replica="my app worker", age_seconds=3.0)
    assert GhostConnection.from_text(spaced.to_text()) == spaced
    unnamed = GhostConnection(pid=8, replica="", age_seconds=0.25)
    assert GhostConnection.from_text(unnamed.to_text()) == unnamed
    # A line break in a name never splits the line.
    assert "\n" not in GhostConnection(pid=9, replica="a\nb", age_seconds=1).to_text()
    assert parse_ghosts(["4242 pb-seed-s1-r0 12.5s", "not one", 42, "x r 1s"]) == [ghost]
    assert parse_ghosts("4242 r 1s") == []


def measured_status() -> BenchmarkStatus:
    latency = Histogram()
    for ms in (0.4, 0.5, 1.2, 1.2, 30.0):
        latency.add(ms)
    step = StepResult(
        replicas=8,
        outcome="Failed",
        peak_connections=29,
        peak_source="serverLog",
        refusals=3,
        refusals_by_class={"tooManyClients": 3},
        errors=ErrorCounts(too_many_clients=3),
        first_error_class="tooManyClients",
        latency_histogram=HistogramCounts.of(latency),
        ghost_connections=[GhostConnection(pid=1, replica="r0", age_seconds=2.0).to_text()],
        connection_age_seconds={"p50": None, "max": 4.0},
    )
    verdict = Verdict(max_safe_replicas=2, first_failing_replicas=8, summary="2 replicas fit; 8 do not.")
    return BenchmarkStatus(
        phase="Failed",
        max_connections=30,
        verdict=verdict,
        short_verdict="safe 2, fails at 8: tooManyClients",
        variants=[VariantStatus(name="direct", steps=[StepResult(replicas=2, outcome="Passed"), step])],
    )


@pytest.mark.parametrize("status", [BenchmarkStatus(), measured_status()])
def test_the_written_status_leaves_defaults_out_and_reads_back_the_same(status: BenchmarkStatus) -> None:
    written = status.to_json()
    assert BenchmarkStatus.model_validate(written) == status
    assert status_from_resource(written) == status
    assert full_status(written) == status.full_json()
    # What a plain benchmark never has is never shown: no comparison, no variant being measured.
    assert "comparison" not in written
    assert "currentVariant" not in written
    # The printer columns' counters are there at zero too.
    assert {"phase", "replicas", "peakConnections", "maxConnections", "failures"} <= set(written)


def test_the_written_step_holds_only_what_was_measured() -> None:
    step = measured_status().to_json()["variants"][0]["steps"][1]
    assert step["latencyHistogram"]["buckets"] == "0.4137:1 0.5012:1 1.212:2 30.43:1"
    assert step["ghostConnections"] == ["1 r0 2s"]
    assert step["connectionAgeSeconds"] == {"max": 4.0}  # the unknown median stays null by leaving it out
    assert not {"checkoutWaitHistogram", "pooler", "queries"} & set(step)
    assert step["errors"] == {"tooManyClients": 3}


def test_a_merge_patch_nulls_what_the_status_no_longer_has() -> None:
    before = measured_status()
    before.current_variant, before.message = "tx", "measuring"
    written = {**before.to_json(), "kopf": {"progress": {}}}
    after = BenchmarkStatus(phase="Running", verdict=Verdict(max_safe_replicas=2))
    patch = after.merge_patch(written)
    assert (patch["currentVariant"], patch["message"], patch["variants"]) == (None, None, None)
    assert patch["verdict"] == {"maxSafeReplicas": 2, "firstFailingReplicas": None, "summary": None}
    assert "kopf" not in patch  # another writer's key is left alone
    assert after.merge_patch(None) == after.to_json()


@pytest.mark.parametrize(
    ("safe", "failing", "cause", "words"),
    [
        (2, 8, "tooManyClients", "safe 2, fails at 8: tooManyClients"),
        (8, None, "", "safe 8, none failed"),
        (None, 2, "timeout", "fails at 2: timeout"),
        (None, None, "", "nothing judged"),
    ],
)
def test_the_short_verdict_is_a_few_words(safe: int | None, failing: int | None, cause: str, words: str) -> None:
    assert short_verdict_words(safe, failing, cause) == words


def test_the_resource_keeps_each_steps_summary_and_the_config_map_gives_back_the_rest() -> None:
    full = measured_status().to_json()
    summary = lean_status(full)
    step = summary["variants"][0]["steps"][1]
    assert set(step) <= set(STEP_SUMMARY_FIELDS)
    assert {"latencyHistogram", "ghostConnections", "connectionAgeSeconds"}.isdisjoint(step)
    assert step["refusalsByClass"] == {"tooManyClients": 3}
    assert {k: v for k, v in summary.items() if k != "variants"} == {k: v for k, v in full.items() if k != "variants"}
    assert join_status(summary, full) == full
    assert join_saved(summary, json.dumps(full)) == full
    assert measured_status().merge_patch(None) == summary  # what the operator writes to the resource
    # A missing, unreadable or lagging copy leaves detail out, never changes the summary.
    assert join_saved(summary, None) == join_saved(summary, "not json") == summary
    lagging = lean_status(full)
    lagging["variants"][0]["steps"] = lagging["variants"][0]["steps"][:1]
    assert join_status(summary, lagging) == summary
    other_start = json.loads(json.dumps(full))
    other_start["variants"][0]["steps"][1]["startedAt"] = "2026-01-01T00:00:00Z"
    assert join_status(summary, other_start) == summary


def test_the_step_summary_names_step_fields_and_the_printer_columns_read_the_summary() -> None:
    aliases = {field.alias or name for name, field in StepResult.model_fields.items()}
    assert set(STEP_SUMMARY_FIELDS) <= aliases
    written = {field.alias or name for name, field in BenchmarkStatus.model_fields.items()}
    paths = [str(column["jsonPath"]).split(".") for column in cast("list[dict[str, Any]]", PRINTER_COLUMNS)]
    for path in paths:
        if path[1] == "status":
            assert path[2] in written, path  # a top-level field, never inside a step's detail
