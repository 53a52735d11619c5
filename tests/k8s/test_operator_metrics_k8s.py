"""The operator's own /metrics against a real kube-apiserver: scraped while the small seed runs and
after it finished, its figures are the ones status shows; deleting the resource removes its series."""

from __future__ import annotations

from typing import Any

import pytest

from poolbench.core.benchmark import full_status
from poolbench.core.contracts import operator_metrics as m
from tests.harness.kube import wait_for
from tests.harness.operator import create_namespace, kubectl
from tests.harness.opmetrics import expected, health, of_benchmark, scrape
from tests.k8s.test_operator_e2e import apply_benchmark, small_seed, wait_phase

pytestmark = pytest.mark.k8s

NAME = "seed-metrics"


def test_metrics_equal_status_while_and_after_the_seed_runs(operator: Any, kube: Any, control_plane: Any) -> None:
    ns = create_namespace(kube, "metrics")
    apply_benchmark(control_plane, ns, small_seed(NAME))

    # While it runs: the running step's backends are served by state, with the phase and the plan.
    running_backends: list[float] = []

    def a_loaded_read() -> bool:
        got = of_benchmark(scrape(operator.metrics_url), ns, NAME)
        if got.get((m.PHASE, ((m.PHASE_LABEL, "Running"),))) != 1:
            return False
        held = sum(got.get((m.BACKENDS, ((m.STATE_LABEL, s),)), 0) for s in m.STATES)
        running_backends.append(held)
        return held > 0

    wait_for(a_loaded_read, 240, interval=0.2, what="a scrape showing the running step's backends")
    during = of_benchmark(scrape(operator.metrics_url), ns, NAME)
    assert during[(m.STEPS, ())] == 2
    assert during[(m.USABLE_CONNECTIONS, ())] > 0
    assert health(scrape(operator.metrics_url))[m.RUNNING_BENCHMARKS] >= 1

    obj = wait_phase(kube, ns, NAME)
    status = full_status(obj["status"])
    assert status["phase"] == "Failed", (status.get("message"), operator.log()[-3000:])
    got = of_benchmark(scrape(operator.metrics_url), ns, NAME)
    want = expected(status)
    assert {k: got.get(k) for k in want} == want
    # the figures a reader checks first, said once more against the printer columns' fields
    last_peak = status["variants"][0]["steps"][-1]["peakConnections"]
    served_failures = sum(v for (name, _), v in got.items() if name == m.FAILURES + m.TOTAL)
    assert got[(m.PEAK_BACKENDS, ())] == last_peak
    assert served_failures == status["failures"]
    assert got[(m.FAILURES + m.TOTAL, ((m.CLASS_LABEL, "tooManyClients"),))] > 0
    ops = health(scrape(operator.metrics_url))
    assert ops[m.STATUS_PATCHES + m.TOTAL] >= 4  # provisioning, two steps' starts and ends, the verdict
    assert ops[m.RECONCILES + m.TOTAL] >= 1
    assert ops[m.RUNNING_BENCHMARKS] == 0
    print(
        f"\nmetrics vs status: peak {got[(m.PEAK_BACKENDS, ())]:g}/{last_peak}"
        f" failures {served_failures:g}/{status['failures']}"
        f" ghosts {got[(m.GHOST_BACKENDS, ())]:g}; most backends in one scrape while running {max(running_backends):g}"
    )

    # A restarted operator runs no daemon for a finished benchmark: it serves it from its status again.
    operator.stop()
    operator.start()
    wait_for(
        lambda: of_benchmark(scrape(operator.metrics_url), ns, NAME),
        60,
        interval=0.5,
        what="the finished benchmark's series after a restart",
    )
    again = of_benchmark(scrape(operator.metrics_url), ns, NAME)
    assert {k: again.get(k) for k in want} == want

    kubectl(control_plane, "-n", ns, "delete", "poolbenchmark", NAME, "--timeout=90s")
    wait_for(
        lambda: not of_benchmark(scrape(operator.metrics_url), ns, NAME),
        60,
        interval=0.5,
        what="the deleted benchmark's series gone",
    )
    kube.delete(f"/api/v1/namespaces/{ns}")
