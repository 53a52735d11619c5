"""Fixtures for the ``node`` tier: the project's images under a real kubelet and containerd.

- ``cluster`` (session): ``cluster.Cluster`` (control plane + one real node), or the tier fails.
- ``helm_release`` (session): the operator installed with the Helm chart, its pod Running under its
  ServiceAccount with the locally built images.
- ``restricted_namespace``: a fresh namespace that enforces Pod Security Admission ``restricted``.

Logs and the quoted outputs the node tier records (``report.md``) are kept in the cluster's logs
directory when a test failed or POOLBENCH_K8S_KEEP_LOGS=1; the path is printed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.k8s.conftest import create_namespace, kubectl
from tests.k8s.kube import Kube

from .cluster import Cluster, NodeError

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_IMAGE = "localhost/poolbench-operator:dev"
WORKLOAD_IMAGE = "localhost/poolbench-workload:dev"
POSTGRES_IMAGE = "localhost/poolbench-postgres:15"
#: Stand-in for CloudNativePG's pgbouncer image (hack/build-images.sh): uid 998 / gid 996, pgbouncer on PATH.
PGBOUNCER_IMAGE = "localhost/poolbench-pgbouncer:1.18"
_failed = {"any": False}
_report: list[str] = []  # what record() quoted, shown at the end of the run


def pytest_terminal_summary(terminalreporter):
    if _report:
        terminalreporter.write_sep("-", "node tier: quoted outputs")
        terminalreporter.write("".join(_report) + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if outcome.get_result().failed:
        _failed["any"] = True


@pytest.fixture(scope="session")
def cluster():
    try:
        node = Cluster.from_env()
    except NodeError as err:
        pytest.fail(f"the node tier cannot run: {err}", pytrace=False)
    try:
        node.start()
    except NodeError as err:
        pytest.fail(f"the node did not start: {err}\nlogs kept in {node.logs_dir}", pytrace=False)
    print(f"\nnode up: {node.timings}")
    yield node
    keep = keep_logs()
    problems = node.stop(keep_logs=keep)
    if keep or problems:
        print(f"\nnode logs kept in {node.logs_dir}")
    assert not problems, f"the node's teardown left: {problems}"


@pytest.fixture(scope="session")
def kube(cluster):
    client = Kube(cluster.kubeconfig)
    yield client
    client.close()


def record(cluster: Cluster, title: str, text: str) -> None:
    """Quotes an output in the tier's report (printed at the end of the run, and kept with the logs)."""
    entry = f"\n## {title}\n```\n{text.rstrip()}\n```\n"
    _report.append(entry)
    with open(cluster.logs_dir / "report.md", "a") as report:
        report.write(entry)


def helm_binary() -> str:
    return os.environ.get("POOLBENCH_HELM") or subprocess.run(
        [str(ROOT / "hack/build-helm.sh")], capture_output=True, text=True, check=True).stdout.split()[-1]


def helm_install(cluster: Cluster) -> subprocess.CompletedProcess:
    """``helm install --wait`` of charts/poolbench with the locally built images (never pulled)."""
    return subprocess.run(
        [helm_binary(), "install", "poolbench", str(ROOT / "charts/poolbench"), f"--kubeconfig={cluster.kubeconfig}",
         "--set", f"image.operator={OPERATOR_IMAGE}", "--set", f"image.workload={WORKLOAD_IMAGE}",
         "--set", "image.pullPolicy=Never", "--wait", "--timeout=180s"],
        capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="session")
def helm_release(cluster, kube):
    """``helm install`` of charts/poolbench: the chart's CRD, RBAC and Deployment, the local images."""
    proc = helm_install(cluster)
    if proc.returncode != 0:
        pods = kubectl(cluster, "-n", "poolbench-system", "get", "pods", "-o", "wide", check=False).stdout
        described = kubectl(cluster, "-n", "poolbench-system", "describe", "pods", check=False).stdout
        pytest.fail(f"helm install failed:\n{proc.stderr}\n{pods}\n{described[-4000:]}", pytrace=False)
    kubectl(cluster, "wait", "--for=condition=Established", "crd/poolbenchmarks.poolbench.dev", "--timeout=60s")
    yield proc.stdout
    save_operator_log(cluster)


def save_operator_log(cluster: Cluster) -> None:
    """The operator pod's log tail, kept with the node's logs (while the node is still up)."""
    if not cluster.stopped:
        log = kubectl(cluster, "-n", "poolbench-system", "logs", "deploy/poolbench-operator", "--tail=200",
                      check=False).stdout
        (cluster.logs_dir / "operator-tail.log").write_text(log)


def keep_logs() -> bool:
    return _failed["any"] or os.environ.get("POOLBENCH_K8S_KEEP_LOGS") == "1"


def operator_pod(kube: Kube) -> dict:
    pods = [p for p in kube.items("/api/v1/namespaces/poolbench-system/pods",
                                  labelSelector="app.kubernetes.io/name=poolbench-operator")
            if not p["metadata"].get("deletionTimestamp")]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


def create_restricted_namespace(kube: Kube, prefix: str) -> str:
    """A fresh namespace that enforces Pod Security Admission ``restricted`` on every pod."""
    return create_namespace(kube, prefix, labels={"pod-security.kubernetes.io/enforce": "restricted",
                                                  "pod-security.kubernetes.io/enforce-version": "latest"})
