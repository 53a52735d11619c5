"""The operator end to end against a real kube-apiserver, a real scheduler and controller-manager,
the test pod runner, and real PostgreSQL in a pod. The operator runs as `kopf run` under the chart's
ServiceAccount (RBAC is tested, not bypassed) and reaches Postgres by pod IP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from poolbench.core.benchmark import full_status
from poolbench.core.results import RESULTS_KEY, HistogramCounts, join_saved
from tests.harness.controlplane import ROOT
from tests.harness.kube import wait_for
from tests.harness.operator import create_namespace, kubectl
from tests.harness.status_cases import kstatus

pytestmark = pytest.mark.k8s

GROUP_PATH = "/apis/poolbench.dev/v1alpha1"
TERMINAL = ("Completed", "BoundaryFound", "Failed", "Invalid")


def apply_benchmark(control_plane: Any, namespace: str, doc: dict[str, Any]) -> None:
    kubectl(control_plane, "-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(doc))


def written(kube: Any, namespace: str, name: str) -> dict[str, Any]:
    """The resource as the API server holds it: its status as the operator wrote it (defaults left out)."""
    return cast("dict[str, Any]", kube.get(f"{GROUP_PATH}/namespaces/{namespace}/poolbenchmarks/{name}"))


def benchmark(kube: Any, namespace: str, name: str) -> dict[str, Any]:
    """The resource with its status read as the plugin and the report read it: the summary joined with
    each finished step's detail from the results ConfigMap, every field, each one the operator left out
    at its default."""
    obj = written(kube, namespace, name)
    if "status" in obj:
        obj["status"] = full_status(joined_status(kube, namespace, obj["status"]))
    return obj


def joined_status(kube: Any, namespace: str, status: dict[str, Any]) -> dict[str, Any]:
    """The resource's status (each step's summary) with the detail its results ConfigMap keeps."""
    name = status.get("resultsConfigMap")
    if not name:
        return status
    config_map = kube.get_or_none(f"/api/v1/namespaces/{namespace}/configmaps/{name}")
    return join_saved(status, ((config_map or {}).get("data") or {}).get(RESULTS_KEY))


def wait_phase(
    kube: Any, namespace: str, name: str, phases: tuple[str, ...] = TERMINAL, timeout: float = 300
) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        obj = benchmark(kube, namespace, name)
        return obj if (obj.get("status") or {}).get("phase") in phases else None

    return cast("dict[str, Any]", wait_for(done, timeout, interval=1.0, what=f"{name} phase in {phases}"))


def small_seed(name: str = "seed-small", **spec: Any) -> dict[str, Any]:
    """manifests/examples/small.yaml named ``name``, with ``spec`` keys replaced."""
    doc: dict[str, Any] = yaml.safe_load((ROOT / "manifests/examples/small.yaml").read_text())
    doc["metadata"] = {"name": name}
    doc["spec"].update(spec)
    return doc


def events(kube: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    items = kube.items(f"/api/v1/namespaces/{namespace}/events")
    return [e for e in items if e.get("involvedObject", {}).get("name") == name]


def children(kube: Any, namespace: str) -> dict[str, list[str]]:
    sel = {"labelSelector": "app.kubernetes.io/managed-by=poolbench-operator"}
    paths = {
        "statefulsets": f"/apis/apps/v1/namespaces/{namespace}/statefulsets",
        "deployments": f"/apis/apps/v1/namespaces/{namespace}/deployments",
        "services": f"/api/v1/namespaces/{namespace}/services",
        "secrets": f"/api/v1/namespaces/{namespace}/secrets",
        "networkpolicies": f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies",
    }
    out = {k: [o["metadata"]["name"] for o in kube.items(p, **sel)] for k, p in paths.items()}
    out["pods"] = [o["metadata"]["name"] for o in kube.items(f"/api/v1/namespaces/{namespace}/pods")]
    return out


def direct_steps(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps so far of a benchmark without spec.variants: its one variant's."""
    return ((status.get("variants") or [{}])[0]).get("steps") or []


def assert_small_seed_steps(status: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """manifests/examples/small.yaml's answer: 2 replicas pass (peak = predicted, ghosts), 8 fail."""
    assert [v["name"] for v in status["variants"]] == ["direct"], status
    assert "steps" not in status, status
    assert status["variants"][0]["verdict"] == status["verdict"]  # the printer columns read the one verdict
    first, second = status["variants"][0]["steps"]
    assert first["replicas"] == 2, first
    assert first["outcome"] == "Passed", first
    assert first["predictedPeak"] == 10
    assert first["peakConnections"] == 10
    assert first["idleAtEnd"] >= 4  # 2 replicas × min(poolSize 2, peak 5) ghosts
    assert sum(first["errors"].values()) == 0
    assert second["replicas"] == 8, second
    assert second["outcome"] == "Failed", second
    assert second["errors"]["tooManyClients"] > 0
    assert second["firstErrorClass"] == "tooManyClients"
    assert second["restarts"] > 0  # onError crash: the pods died and the kubelet restarted them
    assert status["verdict"]["maxSafeReplicas"] == 2
    assert status["verdict"]["firstFailingReplicas"] == 8
    return first, second


def assert_scaled_down_then_collected(kube: Any, ns: str, name: str, delete: Callable[[], object]) -> None:
    """cleanup ScaleDown left the workload at 0 and Postgres up; deleting the resource (``delete()``)
    garbage-collects every child; then the namespace goes."""
    assert kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}-workload")["spec"]["replicas"] == 0
    assert children(kube, ns)["statefulsets"] == [f"{name}-postgres"]
    delete()
    wait_for(lambda: not any(children(kube, ns).values()), 120, interval=1.0, what="children garbage-collected")
    kube.delete(f"/api/v1/namespaces/{ns}")


def test_seed_scaled_down_end_to_end(operator: Any, kube: Any, control_plane: Any) -> None:
    ns = create_namespace(kube, "e2e")
    apply_benchmark(control_plane, ns, small_seed())
    obj = wait_phase(kube, ns, "seed-small")
    status = obj["status"]
    assert status["phase"] == "Failed", (status.get("message"), operator.log()[-3000:])
    first, second = assert_small_seed_steps(status)
    assert first["sampleGaps"] == 0
    assert second["sampleGaps"] == 0
    assert second["samples"] > 10
    assert status["totalSteps"] == 2
    for step in (first, second):
        # The stand-in kubelet serves no logs: the step keeps its sampled peak and says why.
        assert step["peakSource"] == "sampled", step
        assert "log is not served" in step["peakSourceReason"], step
        assert step["peakConnections"] == step["sampledPeakConnections"], step
    assert status["progress"] == "2/2"
    # What the callers felt, read from the pods' metrics: every statement of step 1 timed.
    assert first["throughput"] > 0
    assert first["latencyMs"]["p50"] > 0
    assert first["checkoutWaitMs"]["max"] > 0
    assert HistogramCounts.model_validate(first["latencyHistogram"]).histogram().total == first["queries"]
    assert first["peakByWaitEventType"]
    assert first["connectionAgeSeconds"]["max"] > 0
    # The pools' own count: each done pod's timeline (its summary, served beside its metrics), summed by time.
    assert first["clientPeakConnections"] == first["predictedPeak"]
    assert first["clientPeakExact"] is True
    assert first["clientConnects"] >= first["predictedPeak"]
    # Conditions in step with the phase, and `kubectl wait` works on the finished benchmark.
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions == {
        "Ready": ("False", "StepFailed"),
        "Reconciling": ("False", "Finished"),
        "Stalled": ("True", "StepFailed"),
    }
    assert all(c["observedGeneration"] == obj["metadata"]["generation"] for c in status["conditions"])
    kubectl(
        control_plane,
        "-n",
        ns,
        "wait",
        "--for=condition=Reconciling=false",
        "poolbenchmark/seed-small",
        "--timeout=20s",
    )
    kubectl(control_plane, "-n", ns, "wait", "--for=condition=Ready=false", "poolbenchmark/seed-small", "--timeout=20s")
    kubectl(control_plane, "-n", ns, "wait", "--for=condition=Stalled", "poolbenchmark/seed-small", "--timeout=20s")
    # Flux and kpt read it as its phase says (docs/guides/gitops.md): Failed, the verdict its message
    read = kstatus([obj])["seed-small"]
    assert (read.get("status"), read.get("message")) == ("Failed", status["message"]), read
    # its spec cannot change any more (the operator's finalizer, below, still goes as it should)
    edit = '{"spec": {"stepTimeoutSeconds": 60}}'
    proc = kubectl(control_plane, "-n", ns, "patch", "pbench/seed-small", "--type=merge", "-p", edit, check=False)
    assert proc.returncode != 0
    assert "spec is immutable" in proc.stderr, proc.stderr

    table = kubectl(control_plane, "-n", ns, "get", "poolbenchmarks", "-o", "wide").stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:8] == ["NAME", "PHASE", "STEP", "REPLICAS", "PEAK", "MAXCONN", "FAILURES", "MAXSAFE"]
    assert row.split()[:8] == [
        "seed-small",
        "Failed",
        "2/2",
        "8",
        str(status["peakConnections"]),
        "30",
        str(status["failures"]),
        "2",
    ]
    reasons = {e["reason"] for e in events(kube, ns, "seed-small")}
    assert {"StepStarted", "StepPassed", "StepFailed", "Finished"} <= reasons, reasons

    # the password is only in the Secret
    secret = kube.get(f"/api/v1/namespaces/{ns}/secrets/seed-small-credentials")
    import base64

    password = base64.b64decode(secret["data"]["postgres-password"]).decode()
    assert password not in json.dumps(obj)
    assert password not in json.dumps(events(kube, ns, "seed-small"))
    assert password not in operator.log()

    assert_scaled_down_then_collected(
        kube,
        ns,
        "seed-small",
        lambda: kubectl(control_plane, "-n", ns, "delete", "poolbenchmark", "seed-small", "--timeout=90s"),
    )


def test_malformed_is_rejected_by_the_api_server_with_field_paths(
    installed: Any, control_plane: Any, kube: Any
) -> None:
    ns = create_namespace(kube, "bad")
    bad = small_seed(
        "bad-one",
        steps=[0],
        workload={"threads": "six", "engine": {"poolClass": "MagicPool"}},
        sampling={"intervalMs": 1},
    )
    proc = kubectl(control_plane, "-n", ns, "apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert proc.returncode != 0
    # spec.steps is a list or {search: …}, which no structural schema can say: the operator checks it
    # (test_bad_input's corpus has steps: [0] ending Invalid with its path).
    for path in ("spec.workload.threads", "spec.workload.engine.poolClass", "spec.sampling.intervalMs"):
        assert path in proc.stderr, (path, proc.stderr)
    # strict field validation (kubectl's default) refuses unknown fields by path before the schema
    proc = kubectl(
        control_plane, "-n", ns, "apply", "-f", "-", input=yaml.safe_dump(small_seed("x1", bogus=True)), check=False
    )
    assert proc.returncode != 0
    assert 'unknown field "spec.bogus"' in proc.stderr
    too_long = small_seed("x" * 45)
    proc = kubectl(control_plane, "-n", ns, "apply", "-f", "-", input=yaml.safe_dump(too_long), check=False)
    assert proc.returncode != 0
    assert "metadata.name" in proc.stderr
    kube.delete(f"/api/v1/namespaces/{ns}")


def test_what_the_schema_cannot_catch_ends_invalid(operator: Any, control_plane: Any, kube: Any) -> None:
    ns = create_namespace(kube, "inv")
    doc = small_seed("contradiction", workload={"engine": {"poolClass": "NullPool", "maxOverflow": 3}})
    apply_benchmark(control_plane, ns, doc)
    obj = wait_phase(kube, ns, "contradiction", timeout=60)
    assert obj["status"]["phase"] == "Invalid"
    assert "spec.workload.engine" in obj["status"]["message"]
    assert "maxOverflow" in obj["status"]["message"]
    conditions = {c["type"]: (c["status"], c["reason"]) for c in obj["status"]["conditions"]}
    assert conditions["Stalled"] == ("True", "InvalidSpec")
    assert conditions["Ready"] == ("False", "InvalidSpec")
    kubectl(control_plane, "-n", ns, "wait", "--for=condition=Stalled", "poolbenchmark/contradiction", "--timeout=20s")
    read = kstatus([obj])["contradiction"]
    assert (read.get("status"), read.get("message")) == ("Failed", obj["status"]["message"]), read
    warnings = [e for e in events(kube, ns, "contradiction") if e["type"] == "Warning" and e["reason"] == "Invalid"]
    assert warnings
    assert not any(v for k, v in children(kube, ns).items())
    kube.delete(f"/api/v1/namespaces/{ns}")


def test_every_manifest_and_the_chart_pass_server_dry_run(installed: Any, control_plane: Any, tmp_path: Path) -> None:
    for path in sorted((ROOT / "manifests").rglob("*.yaml")):
        args = ["apply", "--dry-run=server", "-f", str(path)]
        if path.parent.name == "examples":
            args = ["-n", "default", *args]
        kubectl(control_plane, *args)
    helm = (
        os.environ.get("POOLBENCH_HELM")
        or subprocess.run(
            [str(ROOT / "hack/build-helm.sh")], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
    )
    rendered = subprocess.run(
        [helm, "template", "poolbench", str(ROOT / "charts/poolbench"), "--include-crds"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    chart = tmp_path / "chart.yaml"
    chart.write_text(rendered)
    kubectl(control_plane, "apply", "--dry-run=server", "-f", str(chart))


def quick(name: str, **spec: Any) -> dict[str, Any]:
    """A benchmark that passes in a few seconds per step."""
    doc: dict[str, Any] = {
        "apiVersion": "poolbench.dev/v1alpha1",
        "kind": "PoolBenchmark",
        "metadata": {"name": name},
        "spec": {
            "postgres": {"maxConnections": 20},
            "workload": {"threads": 2, "iterations": 10, "holdSeconds": 1, "onError": "count"},
            "steps": [1, 2],
            "stepTimeoutSeconds": 90,
        },
    }
    doc["spec"].update(spec)
    return doc


def test_operator_killed_at_random_points_resumes_without_losing_or_redoing_steps(
    operator: Any, control_plane: Any, kube: Any
) -> None:
    """SIGKILL the operator 10 times at seeded random moments while 3 benchmarks run."""
    import random

    rng = random.Random(20261125)
    runs = [(create_namespace(kube, "kill"), f"crash-{i}") for i in range(3)]
    for ns, name in runs:
        apply_benchmark(control_plane, ns, quick(name))
    finished_seen: dict[tuple[Any, ...], dict[str, Any]] = {}

    def observe() -> None:
        for ns, name in runs:
            for step in direct_steps(benchmark(kube, ns, name).get("status") or {}):
                if step.get("outcome"):
                    key = (ns, name, step["replicas"], step["startedAt"])
                    finished_seen.setdefault(key, step)

    kills = 0
    while kills < 10:
        deadline = time.monotonic() + rng.uniform(1.0, 6.0)
        while time.monotonic() < deadline:
            observe()
            time.sleep(0.3)
        operator.stop(signal.SIGKILL)
        kills += 1
        operator.start()
    for ns, name in runs:
        obj = wait_phase(kube, ns, name, timeout=300)
        status = obj["status"]
        assert status["phase"] == "Completed", status.get("message")
        kubectl(control_plane, "-n", ns, "wait", "--for=condition=Ready", f"poolbenchmark/{name}", "--timeout=20s")
        assert [s["replicas"] for s in status["variants"][0]["steps"]] == [1, 2]
        assert all(s["outcome"] == "Passed" for s in status["variants"][0]["steps"])
        # each step's detail survived the restarts: the results ConfigMap, read back at each resume, is whole
        assert all(s["samples"] > 0 and s["latencyHistogram"]["buckets"] for s in status["variants"][0]["steps"])
        results = kube.get(f"/api/v1/namespaces/{ns}/configmaps/{name}-results")
        assert [o["uid"] for o in results["metadata"]["ownerReferences"]] == [obj["metadata"]["uid"]]
        # no finished step was redone: every finished step seen during the run is still there, unchanged
        for (sns, sname, replicas, started), seen in finished_seen.items():
            if (sns, sname) == (ns, name):
                final = next(s for s in status["variants"][0]["steps"] if s["replicas"] == replicas)
                assert final["startedAt"] == started
                assert final["finishedAt"] == seen["finishedAt"]
        kids = children(kube, ns)
        assert kids["statefulsets"] == [f"{name}-postgres"]
        assert kids["deployments"] == [f"{name}-workload"]
        assert kids["services"] == [f"{name}-postgres"]
        assert kids["secrets"] == [f"{name}-credentials"]
        assert kids["networkpolicies"] == [f"{name}-postgres", f"{name}-workload"]
    for ns, name in runs:
        kubectl(control_plane, "-n", ns, "delete", "poolbenchmark", name, "--timeout=90s")
        wait_for(lambda ns=ns: not any(children(kube, ns).values()), 90, interval=1.0, what=f"{ns} children gone")
        kube.delete(f"/api/v1/namespaces/{ns}")


def test_postgres_pod_killed_mid_step_fails_the_step_and_the_operator_survives(
    operator: Any, control_plane: Any, kube: Any
) -> None:
    """The database restarts under the workload; status says so, the monitor reconnects."""
    ns = create_namespace(kube, "pgkill")
    apply_benchmark(
        control_plane,
        ns,
        quick(
            "pgkill",
            steps=[2, 2],
            stopOnFailure=False,
            workload={"threads": 2, "durationSeconds": 8, "holdSeconds": 1, "onError": "count"},
        ),
    )

    def running_step() -> Any:
        status = benchmark(kube, ns, "pgkill").get("status") or {}
        steps = direct_steps(status)
        return status.get("phase") == "Running" and steps and steps[-1].get("peakConnections", 0) >= 2

    wait_for(running_step, 180, interval=0.5, what="load on step 1")
    kube.delete(f"/api/v1/namespaces/{ns}/pods/pgkill-postgres-0", query={"gracePeriodSeconds": "0"})
    obj = wait_phase(kube, ns, "pgkill", timeout=300)
    status = obj["status"]
    first = status["variants"][0]["steps"][0]
    assert first["outcome"] == "Failed"
    assert first["databaseRestarts"] >= 1
    assert "database restarted" in first["reason"]
    assert first["sampleGaps"] >= 1  # the gap is in the status, not hidden
    assert len(direct_steps(status)) == 2
    assert direct_steps(status)[1]["outcome"] in ("Passed", "Failed")
    assert operator.proc is not None
    assert operator.proc.poll() is None
    reasons = {e["reason"] for e in events(kube, ns, "pgkill")}
    assert "DatabaseRestarted" in reasons
    kube.delete(f"/api/v1/namespaces/{ns}")


def test_operator_cannot_do_what_it_does_not_need(installed: Any, control_plane: Any) -> None:
    """Least privilege, checked by the API server's own authorizer."""
    sa = "system:serviceaccount:poolbench-system:poolbench-operator"

    def can(*args: str) -> bool:
        proc = kubectl(control_plane, "auth", "can-i", f"--as={sa}", *args, check=False)
        return proc.stdout.strip() == "yes"

    assert can("patch", "poolbenchmarks.poolbench.dev/status", "-n", "default")
    assert can("get", "pods", "--subresource=proxy", "-n", "default")
    assert can("get", "pods", "--subresource=log", "-n", "default")  # the PostgreSQL pod's log
    assert can("watch", "pods", "-n", "default")  # the end of a scale-down, as it happens
    assert can("create", "events", "-n", "default")
    assert can("get", "secrets/poolbench-operator-key", "-n", "poolbench-system")  # its own key only
    assert can("create", "secrets", "-n", "default")  # a benchmark's Secret, for the pods
    assert can("create", "networkpolicies", "-n", "default")  # the fence around PostgreSQL and PgBouncer
    assert can("update", "statefulsets", "-n", "default")  # a child built from other inputs is replaced
    assert can("patch", "configmaps", "-n", "default")  # the results ConfigMap, read back after a restart
    for denied in (
        ["get", "secrets", "-n", "default"],
        ["get", "secrets", "-n", "kube-system"],
        ["get", "secrets/other", "-n", "poolbench-system"],
        ["list", "secrets", "-A"],
        ["watch", "secrets", "-n", "default"],
        ["update", "secrets", "-n", "x"],
        ["create", "pods", "-n", "default"],
        ["create", "pods/exec", "-n", "default"],
        ["create", "pods", "--subresource=exec", "-n", "default"],
        ["create", "pods", "--subresource=attach", "-n", "default"],
        ["create", "pods", "--subresource=portforward", "-n", "default"],
        ["patch", "pods", "--subresource=ephemeralcontainers", "-n", "default"],
        ["create", "pods", "--subresource=log", "-n", "default"],
        ["delete", "pods", "-n", "default"],
        ["patch", "statefulsets", "-n", "default"],
        ["update", "secrets", "-n", "default"],
        ["delete", "poolbenchmarks.poolbench.dev", "-n", "default"],
        ["create", "clusterrolebindings"],
        ["patch", "nodes"],
        ["update", "customresourcedefinitions"],
        ["delete", "namespaces"],
        ["update", "configmaps", "-n", "kube-system"],
        ["delete", "configmaps", "-n", "kube-system"],
        ["list", "configmaps", "-A"],
    ):
        assert not can(*denied), denied
