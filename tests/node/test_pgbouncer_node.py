"""spec.variants on a real node: manifests/examples/seed-pgbouncer.yaml, with the local
postgres and pgbouncer images, in a namespace that enforces Pod Security Admission ``restricted``.
The direct variant meets "too many clients" at 10 replicas; PgBouncer in transaction mode with
NullPool carries the same 150 clients on at most 20 server connections; session mode is recorded
as it comes out.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.harness.controlplane import ROOT
from tests.harness.kube import wait_for
from tests.harness.operator import kubectl
from tests.harness.release import PGBOUNCER_IMAGE, POSTGRES_IMAGE, WORKLOAD_IMAGE, create_restricted_namespace, record
from tests.k8s.test_operator_e2e import benchmark, events, wait_phase

pytestmark = pytest.mark.node

COLUMNS = (
    "variant",
    "replicas",
    "outcome",
    "peakConnections",
    "pooler.clientPeakConnections",
    "pooler.waitingPeak",
    "firstErrorClass",
)


def seed_pgbouncer() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "manifests/examples/seed-pgbouncer.yaml").read_text())
    doc["spec"]["postgres"]["image"] = POSTGRES_IMAGE
    for variant in doc["spec"]["variants"]:
        if variant.get("pooler"):
            variant["pooler"]["image"] = PGBOUNCER_IMAGE
    return doc


def field(step: dict[str, Any], path: str) -> object:
    """A step's value at a dotted path (``pooler.waitingPeak``), "" where there is none."""
    value: object = step
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return "" if value is None else value


def table(status: dict[str, Any]) -> str:
    rows = [COLUMNS]
    for variant in status["variants"]:
        for step in variant["steps"]:
            rows.append((variant["name"], *(str(field(step, c)) for c in COLUMNS[1:])))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def test_seed_pgbouncer_variants_on_a_real_node(cluster: Any, kube: Any, helm_release: Any) -> None:
    ns = create_restricted_namespace(kube, "pgb")
    kubectl(cluster, "-n", ns, "apply", "-f", "-", input=yaml.safe_dump(seed_pgbouncer()))
    name = "seed-pgbouncer"

    def pooled_step_running() -> Any:
        status = benchmark(kube, ns, name).get("status") or {}
        pods = kube.items(f"/api/v1/namespaces/{ns}/pods", labelSelector="app.kubernetes.io/component=workload")
        running = [
            p
            for p in pods
            if p["status"].get("phase") == "Running"
            and p["metadata"]["labels"].get("poolbench.dev/variant") == "tx-nullpool"
        ]
        return len(running) >= 5 or status.get("phase") in ("Failed", "Completed")

    wait_for(pooled_step_running, 600, interval=0.5, what="tx-nullpool's replicas running")
    during = kubectl(
        cluster,
        "-n",
        ns,
        "get",
        "pods",
        "-o",
        "custom-columns=NAME:.metadata.name,VARIANT:.metadata.labels.poolbench\\.dev/variant,"
        "IMAGE:.spec.containers[*].image,NODE:.spec.nodeName,PHASE:.status.phase,"
        "UID:.spec.securityContext.runAsUser",
    ).stdout
    poolers = [
        p
        for p in kube.items(f"/api/v1/namespaces/{ns}/pods", labelSelector="app.kubernetes.io/component=pgbouncer")
        if p["status"].get("phase") == "Running"
    ]
    assert poolers
    for pod in poolers:  # PgBouncer runs with a read-only root: it writes nothing but its volumes
        assert all(c["securityContext"]["readOnlyRootFilesystem"] is True for c in pod["spec"]["containers"])
    pooler_log = kubectl(
        cluster, "-n", ns, "logs", f"deploy/{name}--tx-nullpool-pgbouncer", "--tail=6", check=False
    ).stdout
    obj = wait_phase(kube, ns, name, timeout=900)
    status = obj["status"]
    summary = table(status)
    for variant in status["variants"]:  # a pooled step also says which PgBouncer image ran it
        for step in variant["steps"]:
            assert ("pgbouncer" in step["images"]) == (variant["name"] != "direct"), (variant["name"], step)
            assert {"postgres", "workload"} <= set(step["images"]), step["images"]
    record(cluster, "pods while tx-nullpool runs (images, node, runAsUser)", during)
    record(
        cluster, "kubectl logs deploy/seed-pgbouncer--tx-nullpool-pgbouncer --tail=6 (during tx-nullpool)", pooler_log
    )
    record(cluster, "seed-pgbouncer: per variant and step", summary)
    record(cluster, "status.comparison", status.get("comparison", ""))
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
            f"involvedObject.name={name}",
            "--sort-by=.lastTimestamp",
        ).stdout,
    )

    # The pooler pods ran on the node from the local image, as the image's pgbouncer user.
    assert poolers, during
    for pod in poolers:
        assert pod["spec"]["nodeName"] == "poolbench-node", during
        assert [c["image"] for c in pod["spec"]["containers"]] == [PGBOUNCER_IMAGE], during
        assert pod["spec"]["securityContext"]["runAsUser"] == 998
    # Every pooled variant's PgBouncer is up from provisioning on (idle, it holds no server connection).
    assert {p["metadata"]["labels"]["poolbench.dev/variant"] for p in poolers} == {"tx-nullpool", "session"}

    variants = {v["name"]: v for v in status["variants"]}
    assert list(variants) == ["direct", "tx-nullpool", "session"], summary
    direct = variants["direct"]["steps"]
    assert [s["replicas"] for s in direct] == [5, 10], summary
    assert direct[0]["outcome"] == "Passed", summary
    assert direct[1]["outcome"] == "Failed", summary
    assert direct[1]["firstErrorClass"] == "tooManyClients", summary
    tx = variants["tx-nullpool"]["steps"]
    assert [s["replicas"] for s in tx] == [5, 10], summary
    assert all(s["outcome"] == "Passed" for s in tx), summary
    for step in tx:
        assert step["pooler"], summary
        assert step["peakConnections"] <= 20, summary  # defaultPoolSize + reserve 0
        assert step["pooler"]["clientPeakConnections"] > 20, summary
    session = variants["session"]["steps"]
    assert session, summary
    assert all(s["outcome"] in ("Passed", "Failed") for s in session), summary
    assert all(s["pooler"] for s in session), summary
    if session[-1]["outcome"] == "Failed":
        assert session[-1]["firstErrorClass"], summary
    assert status["comparison"], status

    reasons = {e["reason"] for e in events(kube, ns, name)}
    assert {"StepStarted", "StepPassed", "StepFailed", "Finished"} <= reasons, reasons
    refused = kubectl(cluster, "-n", ns, "get", "events", "--field-selector", "reason=FailedCreate", "-o", "json")
    assert not json.loads(refused.stdout)["items"], "a child was refused (PSA restricted?)"
    images = {c["image"] for p in kube.items(f"/api/v1/namespaces/{ns}/pods") for c in p["spec"]["containers"]}
    assert images <= {POSTGRES_IMAGE, WORKLOAD_IMAGE, PGBOUNCER_IMAGE}, images
    # cleanup ScaleDown: every pooler at 0 with the workloads
    for variant in ("tx-nullpool", "session"):
        dep = kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}--{variant}-pgbouncer")
        assert dep["spec"]["replicas"] == 0
    kube.delete(f"/api/v1/namespaces/{ns}")
