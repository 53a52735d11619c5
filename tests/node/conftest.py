"""Fixtures for the ``node`` tier: the project's images under a real kubelet and containerd.

The harness itself is ``tests.harness`` (``cluster``, ``release``); these are its fixtures.

- ``cluster`` (session): ``Cluster`` (control plane + one real node), or the tier fails.
- ``helm_release`` (session): the operator installed with the Helm chart, its pod Running under its
  ServiceAccount with the locally built images.
- ``node_teardown`` (session): the session's node stopped and the host observed around it; the tests
  that use it run after every other test (``pytest_collection_modifyitems`` below), whatever their file.

Logs and the quoted outputs the node tier records (``report.md``) are kept in the cluster's logs
directory when a test failed or POOLBENCH_K8S_KEEP_LOGS=1; the path is printed.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from tests.harness.cluster import Cluster, NodeError, Teardown, observed_teardown
from tests.harness.kube import Kube
from tests.harness.operator import kubectl
from tests.harness.release import REPORT, helm_install, save_operator_log

_failed = {"any": False}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that use ``node_teardown`` go last: after them the session's node is down."""
    items.sort(key=lambda item: "node_teardown" in getattr(item, "fixturenames", ()))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.write_sep("-", "node tier: quoted outputs")
        terminalreporter.write("".join(REPORT) + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    if outcome.get_result().failed:
        _failed["any"] = True


def keep_logs() -> bool:
    return _failed["any"] or os.environ.get("POOLBENCH_K8S_KEEP_LOGS") == "1"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
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
def kube(cluster: Cluster) -> Iterator[Kube]:
    client = Kube(cluster.kubeconfig)
    yield client
    client.close()


@pytest.fixture(scope="session")
def helm_release(cluster: Cluster, kube: Kube) -> Iterator[str]:
    """``helm install`` of charts/poolbench: the chart's CRD, RBAC and Deployment, the local images."""
    proc = helm_install(cluster)
    if proc.returncode != 0:
        pods = kubectl(cluster, "-n", "poolbench-system", "get", "pods", "-o", "wide", check=False).stdout
        described = kubectl(cluster, "-n", "poolbench-system", "describe", "pods", check=False).stdout
        pytest.fail(f"helm install failed:\n{proc.stderr}\n{pods}\n{described[-4000:]}", pytrace=False)
    kubectl(cluster, "wait", "--for=condition=Established", "crd/poolbenchmarks.poolbench.dev", "--timeout=60s")
    yield proc.stdout
    save_operator_log(cluster)


@pytest.fixture(scope="session")
def node_teardown(cluster: Cluster, kube: Kube) -> Teardown:
    """The session's node torn down, with a pod running until then: what it left, observed."""
    save_operator_log(cluster)
    if keep_logs():
        print(f"\nnode logs kept in {cluster.logs_dir}")
    return observed_teardown(cluster, kube, keep_logs=keep_logs())
