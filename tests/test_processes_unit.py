"""Merging worker processes' summaries into their replica's (no database)."""

from __future__ import annotations

from poolbench.core.budget import per_replica_idle, per_replica_peak
from poolbench.core.contracts.summary import ReplicaSummary
from poolbench.core.histogram import Histogram
from poolbench.core.spec import parse_spec
from workload.processes import merge_summaries


def test_counts_and_histograms_add_up_and_the_earliest_error_wins() -> None:
    a, b = Histogram(), Histogram()
    for ms in (1.0, 2.0, 50.0):
        a.add(ms)
    b.add(700.0)
    workers = [
        {
            "outcomes": {"ok": 3},
            "latencyMs": a.to_json(),
            "checkoutWaitMs": Histogram().to_json(),
            "workStartedAt": 10.0,
            "workEndedAt": 12.0,
            "peakCheckedOut": 3,
        },
        {
            "outcomes": {"ok": 1, "tooManyClients": 2},
            "latencyMs": b.to_json(),
            "checkoutWaitMs": b.to_json(),
            "firstError": "late",
            "firstErrorAt": 30.0,
            "firstErrorClass": "other",
            "workStartedAt": 9.0,
            "workEndedAt": 14.0,
            "peakCheckedOut": 2,
        },
        {
            "outcomes": {"poolTimeout": 1},
            "firstError": "early",
            "firstErrorAt": 20.0,
            "firstErrorClass": "poolTimeout",
            "workStartedAt": 11.0,
            "workEndedAt": None,
        },
    ]
    m = merge_summaries("r0", "holding", [ReplicaSummary.from_json(w) for w in workers]).to_json()
    assert m["outcomes"]["ok"] == 4
    assert m["outcomes"]["tooManyClients"] == 2
    assert m["outcomes"]["poolTimeout"] == 1
    assert m["firstError"] == "early"
    assert m["firstErrorClass"] == "poolTimeout"
    merged = Histogram.from_json(m["latencyMs"])
    assert merged.total == 4
    assert merged.max_ms == 700.0
    assert m["workStartedAt"] == 9.0
    assert m["workEndedAt"] is None  # one worker still works: the replica's work has not ended
    assert m["peakCheckedOut"] == 5
    assert m["processes"] == 3


def test_the_prediction_multiplies_by_the_processes() -> None:
    spec = parse_spec(
        {"steps": [2], "workload": {"threads": 4, "processes": 3, "engine": {"poolSize": 2, "maxOverflow": 1}}}
    )
    assert (per_replica_peak(spec), per_replica_idle(spec)) == (9, 6)
