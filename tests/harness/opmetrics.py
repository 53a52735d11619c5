"""The operator's /metrics in the cluster tiers: a scrape parsed, and what a finished benchmark's status
says those samples must be (the same figures, so status and metrics cannot disagree)."""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from poolbench.core.benchmark import full_status
from poolbench.core.contracts import operator_metrics as m
from poolbench.core.histogram import parse_buckets

#: (metric name, its labels beyond namespace, benchmark and variant) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def of_benchmark(samples: list[tuple[str, dict[str, str], float]], namespace: str, name: str) -> Samples:
    """One benchmark's default-variant samples out of (name, labels, value) triples."""
    out: Samples = {}
    for metric, labels, value in samples:
        if (labels.get(m.NAMESPACE_LABEL), labels.get(m.BENCHMARK_LABEL)) != (namespace, name):
            continue
        if labels.get(m.VARIANT_LABEL) != m.DEFAULT_VARIANT:
            continue
        extra = tuple(sorted((k, v) for k, v in labels.items() if k not in m.BENCHMARK_LABELS))
        out[(metric, extra)] = value
    return out


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def health(samples: list[tuple[str, dict[str, str], float]]) -> dict[str, float]:
    return {name: value for name, labels, value in samples if not labels}


def _count(histogram: dict[str, Any]) -> int:
    return sum(count for _, count in parse_buckets(histogram.get("buckets", "")))


def expected(status: dict[str, Any]) -> Samples:
    """What /metrics must show for a finished benchmark without spec.variants, from its status: the last
    step's peak, ghosts and replicas, the failures by class summed over the steps, no backend held now,
    the phase, the step counts and the histograms' counts."""
    status = full_status(status)  # the written status leaves fields at their default out
    steps = status["variants"][0]["steps"]
    last = steps[-1]
    out: Samples = {
        (m.PEAK_BACKENDS, ()): last["peakConnections"],
        (m.GHOST_BACKENDS, ()): last["idleAtEnd"],
        (m.REPLICAS, ()): last["replicas"],
        (m.USABLE_CONNECTIONS, ()): last["usableConnections"],
        (m.MAX_CONNECTIONS, ()): status["maxConnections"],
        (m.STEP, ()): status["currentStep"],
        (m.STEPS, ()): status["totalSteps"],
        (m.PHASE, ((m.PHASE_LABEL, status["phase"]),)): 1,
        (m.STATEMENT_LATENCY + "_count", ()): sum(_count(s["latencyHistogram"]) for s in steps),
        (m.CHECKOUT_WAIT + "_count", ()): sum(_count(s["checkoutWaitHistogram"]) for s in steps),
    }
    for cls in last["errors"]:
        out[(m.FAILURES + m.TOTAL, ((m.CLASS_LABEL, cls),))] = sum(s["errors"][cls] for s in steps)
    for state in m.STATES:
        out[(m.BACKENDS, ((m.STATE_LABEL, state),))] = 0
    return out
