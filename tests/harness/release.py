"""The project's images and its Helm chart on a one-node cluster (``cluster.Cluster``)."""

from __future__ import annotations

import subprocess
from typing import Any

from .builds import ensure
from .cluster import Cluster
from .controlplane import ROOT
from .kube import Kube
from .operator import create_namespace, kubectl

OPERATOR_IMAGE = "localhost/poolbench-operator:dev"
WORKLOAD_IMAGE = "localhost/poolbench-workload:dev"
POSTGRES_IMAGE = "localhost/poolbench-postgres:15"
#: Stand-in for CloudNativePG's pgbouncer image (hack/build-images.sh): uid 998 / gid 996, pgbouncer on PATH.
PGBOUNCER_IMAGE = "localhost/poolbench-pgbouncer:1.18"


def helm_binary() -> str:
    return str(ensure("POOLBENCH_HELM"))


def helm_install(cluster: Cluster) -> subprocess.CompletedProcess[str]:
    """``helm install --wait`` of charts/poolbench with the locally built images (never pulled)."""
    return subprocess.run(
        [
            helm_binary(),
            "install",
            "poolbench",
            str(ROOT / "charts/poolbench"),
            f"--kubeconfig={cluster.kubeconfig}",
            "--set",
            f"image.operator={OPERATOR_IMAGE}",
            "--set",
            f"image.workload={WORKLOAD_IMAGE}",
            "--set",
            "image.pullPolicy=Never",
            "--wait",
            "--timeout=180s",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )


def save_operator_log(cluster: Cluster) -> None:
    """The operator pod's log tail, kept with the node's logs (while the node is still up)."""
    if not cluster.stopped:
        log = kubectl(
            cluster, "-n", "poolbench-system", "logs", "deploy/poolbench-operator", "--tail=200", check=False
        ).stdout
        (cluster.logs_dir / "operator-tail.log").write_text(log)


def operator_pod(kube: Kube) -> dict[str, Any]:
    pods = [
        p
        for p in kube.items(
            "/api/v1/namespaces/poolbench-system/pods", labelSelector="app.kubernetes.io/name=poolbench-operator"
        )
        if not p["metadata"].get("deletionTimestamp")
    ]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


def create_restricted_namespace(kube: Kube, prefix: str) -> str:
    """A fresh namespace that enforces Pod Security Admission ``restricted`` on every pod."""
    return create_namespace(
        kube,
        prefix,
        labels={
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        },
    )


#: What ``record`` quoted during this run, in order (the node tier prints it at the end).
REPORT: list[str] = []


def record(cluster: Cluster, title: str, text: str) -> None:
    """Quotes an output in the tier's report (printed at the end of the run, and kept with the logs)."""
    entry = f"\n## {title}\n```\n{text.rstrip()}\n```\n"
    REPORT.append(entry)
    with open(cluster.logs_dir / "report.md", "a") as report:
        report.write(entry)
