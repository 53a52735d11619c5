"""Merging worker processes' summaries into their replica's (no database)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from poolbench.core.budget import per_replica_idle, per_replica_peak
from poolbench.core.contracts import metrics
from poolbench.core.contracts.summary import ReplicaSummary
from poolbench.core.histogram import Histogram
from poolbench.core.spec import parse_spec
from tests.conftest import ROOT
from workload.metrics import Measures, ReplicaMetrics
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


#: One worker process in prometheus-client's multiprocess mode: the same counter and histograms the
#: replica serves, recorded value by value into PROMETHEUS_MULTIPROC_DIR; prints its pid.
MULTIPROCESS_WORKER = """
import json, os, sys
from prometheus_client import Counter, Histogram
from poolbench.core.contracts import metrics
from poolbench.core.histogram import GRID_MS, seconds_label
from poolbench.core.outcomes import OUTCOMES
said = json.load(sys.stdin)
attempts = Counter(metrics.ATTEMPTS, "", [metrics.OUTCOME_LABEL])
for outcome in OUTCOMES:
    attempts.labels(outcome).inc(said["outcomes"].get(outcome, 0))
edges = [float(seconds_label(e)) for e in GRID_MS]
for name, key in ((metrics.STATEMENT_LATENCY, "latency"), (metrics.CHECKOUT_WAIT, "wait")):
    h = Histogram(name, "", buckets=edges)
    for ms in said[key]:
        h.observe(ms / 1000)
print(os.getpid())
"""


Samples = dict[tuple[str, tuple[tuple[str, float | str], ...]], float]


def samples(text: str) -> Samples:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            lbl = {k: float(v) if k == "le" else v for k, v in s.labels.items()}
            out[(s.name, tuple(sorted(lbl.items())))] = s.value
    return out


def multiprocess_samples(directory: str) -> Samples:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return samples(generate_latest(registry).decode())


def test_the_parent_serves_what_multiprocess_mode_would() -> None:
    """The parent's merged exposition of its workers' counts equals prometheus-client's
    MultiProcessCollector over the same values recorded by separate processes, before and after
    mark_process_dead (a dead worker's counts stay in both)."""
    said: list[dict[str, Any]] = [
        {"outcomes": {"ok": 3, "tooManyClients": 2}, "latency": [1.2345, 2.71828, 55.555], "wait": [0.0123, 4.5678]},
        {"outcomes": {"ok": 1, "poolTimeout": 4}, "latency": [700.123], "wait": [30001.7, 0.4321, 0.4321]},
        {"outcomes": {"other": 1}, "latency": [], "wait": [12.3456]},
    ]
    summaries = []
    for w in said:
        latency, wait = Histogram(), Histogram()
        for ms in w["latency"]:
            latency.add(ms)
        for ms in w["wait"]:
            wait.add(ms)
        summaries.append(ReplicaSummary(outcomes=w["outcomes"], latency=latency, checkout_wait=wait))
    merged = merge_summaries("r0", "holding", summaries)
    parent = ReplicaMetrics(lambda: merged.outcomes, lambda: Measures(merged.latency, merged.checkout_wait))

    served = samples(generate_latest(parent.registry).decode())
    with tempfile.TemporaryDirectory() as directory:
        env = {"PROMETHEUS_MULTIPROC_DIR": directory, "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        pids = [
            int(
                subprocess.run(
                    [sys.executable, "-c", MULTIPROCESS_WORKER],
                    input=json.dumps(w),
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            for w in said
        ]
        assert len(set(pids)) == len(said)  # three processes, three sets of files

        alive = multiprocess_samples(directory)
        for pid in pids:
            mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        dead = multiprocess_samples(directory)
    assert alive == dead
    attempts = metrics.ATTEMPTS + metrics.TOTAL
    histograms = (metrics.STATEMENT_LATENCY + "_", metrics.CHECKOUT_WAIT + "_")
    compared = {k: v for k, v in served.items() if k[0] == attempts or k[0].startswith(histograms)}
    assert len(compared) > 10
    for key, value in compared.items():
        # every bucket the parent lists (and +Inf, and _count) holds the same cumulative count
        assert alive[key] == pytest.approx(value, abs=1e-6 if key[0].endswith(metrics.SUM) else 0), key
    assert served[(attempts, (("outcome", "ok"),))] == 4
    assert served[(metrics.CHECKOUT_WAIT + "_count", ())] == 6
