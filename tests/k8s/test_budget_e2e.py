"""The connection budget through the operator, on the process-runner tier: a breaking-point
search whose replicas each run two worker processes, and a measured rolling update (the workload
Deployment's own RollingUpdate, held at its first surge), all through the same core step loop as
`poolbench run`."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.operator import create_namespace

from .test_operator_e2e import apply_benchmark, quick, wait_phase

pytestmark = pytest.mark.k8s


def test_a_search_with_worker_processes_and_a_rollout_in_the_cluster(
    operator: Any, control_plane: Any, kube: Any, pod_runner: Any
) -> None:
    # Per replica: 2 processes × QueuePool min(2 threads, 2 + 0) = 4 connections; 14 − the monitor = 13
    # usable: 3 replicas fit (12), 4 do not (16). A rollout of 3 with maxSurge 1 needs 16: it fails.
    ns = create_namespace(kube, "budget")
    doc = quick(
        "budget",
        steps={"search": {"min": 1, "max": 6}},
        postgres={"maxConnections": 14},
        rollout={"maxSurge": 1, "measure": True},
        workload={
            "threads": 2,
            "processes": 2,
            "durationSeconds": 8,
            "holdSeconds": 3,
            "onError": "count",
            "statement": "SELECT pg_sleep(0.2)",
            "engine": {"poolSize": 2, "maxOverflow": 0},
        },
    )
    apply_benchmark(control_plane, ns, doc)
    status = wait_phase(kube, ns, "budget", timeout=420)["status"]
    verdict = status["verdict"]
    assert (verdict["maxSafeReplicas"], verdict["firstFailingReplicas"]) == (3, 4), (
        status["message"],
        operator.log()[-3000:],
    )
    assert verdict["predictedMaxSafeReplicas"] == 3
    probes = [s for s in status["variants"][0]["steps"] if s.get("rolloutFrom") is None]
    assert [s["replicas"] for s in probes] == [3, 4]  # the prediction, confirmed in two probes
    three = probes[0]
    assert three["outcome"] == "Passed", three
    assert three["peakConnections"] == three["predictedPeak"] == 12, three
    assert three["queries"] > 0
    (rollout,) = [s for s in status["variants"][0]["steps"] if s.get("rolloutFrom") is not None]
    assert rollout["rolloutFrom"] == 3
    assert rollout["replicas"] == 4
    assert rollout["outcome"] == "Failed"
    assert rollout["predictedPeak"] == 16
    assert rollout["peakConnections"] == 13
    # The surge pod came from a new pod template beside the 3 old pods (two ReplicaSets, none replaced),
    # and the server held all 12 of the old pods' connections while the surge took the 13th.
    overlap = rollout["rolloutOverlap"]
    assert overlap["achieved"], overlap
    assert overlap["measuredBy"] == "applicationName", overlap
    assert overlap["oldConnections"] == 12, overlap
    by_template: dict[str, int] = {}
    # Pod names: budget-workload-<pod-template-hash>-<suffix>. A refused login is a backend without an
    # application_name yet (its startup packet was not read): it belongs to no pod.
    pods = [name for name in rollout["peakByReplica"] if name.startswith("budget-workload-")]
    assert set(rollout["peakByReplica"]) - set(pods) <= {""}, rollout["peakByReplica"]
    for pod in pods:
        template = pod.rsplit("-", 2)[-2]
        by_template[template] = by_template.get(template, 0) + 1
    assert sorted(by_template.values()) == [1, 3], rollout["peakByReplica"]
    deployment = kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/budget-workload")
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert "poolbench.dev/rollout" in deployment["spec"]["template"]["metadata"]["annotations"]
    assert status["verdict"]["summary"].startswith("Search 1..6")
    assert "3 replicas are safe at rest but not during a rolling update" in status["verdict"]["summary"]
    # Planned: at most 5 probes for 1..6, then the rollout; at the end the count is what ran.
    assert (status["totalSteps"], status["progress"]) == (3, "3/3")
    assert status["phase"] == "Failed"  # the boundary was found, but the measured rollout failed
    kube.delete(f"/api/v1/namespaces/{ns}")
