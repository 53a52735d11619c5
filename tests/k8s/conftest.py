"""Fixtures for tests against a real Kubernetes control plane (no Docker, no kubelet).

The harness itself is ``tests.harness``; these are its fixtures.

- ``control_plane`` (session): etcd + kube-apiserver + kube-controller-manager + kube-scheduler from
  $POOLBENCH_K8S_BIN (built before the tier's first test, see ``tests.harness.builds``). Fails, never skips.
- ``pod_runner`` (session): the stand-in kubelet (``podrunner.PodRunner``) with its Node Ready.
- ``kube`` (session): an admin ``kube.Kube`` client; ``namespace`` (function): a fresh namespace
  whose default ServiceAccount exists, deleted afterwards.

Logs (components, pod runner, container output) are kept when a test failed (or with
POOLBENCH_K8S_KEEP_LOGS=1); the path is printed.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Generator, Iterator
from typing import Any, TypedDict

import pytest

from tests.harness.controlplane import ROOT, ControlPlane, ControlPlaneError
from tests.harness.kube import Kube, wait_for
from tests.harness.operator import OperatorProcess, create_namespace, install_manifests
from tests.harness.podrunner import PodRunner


class _State(TypedDict):
    failed: bool  # a test failed: keep the logs
    kept_logs: str | None  # where they were kept


_state: _State = {"failed": False, "kept_logs": None}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        _state["failed"] = True


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _state["kept_logs"]:
        terminalreporter.write_sep("-", f"k8s logs kept in {_state['kept_logs']}")


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    try:
        cp = ControlPlane.from_env()
    except ControlPlaneError as err:
        pytest.fail(f"no control plane binaries: {err}", pytrace=False)
    try:
        cp.start()
    except Exception as err:  # noqa: BLE001 - any start failure fails the tests loudly
        cp.stop(keep_logs=True)
        _state["kept_logs"] = str(cp.logs_dir)
        pytest.fail(f"the control plane did not start: {err}\nlogs kept in {cp.logs_dir}", pytrace=False)
    yield cp
    keep = _state["failed"] or os.environ.get("POOLBENCH_K8S_KEEP_LOGS") == "1"
    cp.stop(keep_logs=keep)
    if keep:
        _state["kept_logs"] = str(cp.logs_dir)
        print(f"\nk8s logs kept in {cp.logs_dir}")


@pytest.fixture(scope="session")
def pod_runner(control_plane: ControlPlane) -> Iterator[PodRunner]:
    if not shutil.which("ip") or not shutil.which("setpriv"):
        pytest.fail("the pod runner needs iproute2 (ip netns) and util-linux (setpriv)", pytrace=False)
    assert control_plane.kubeconfig is not None, "the control plane has started"
    runner = PodRunner(control_plane.kubeconfig, logs_dir=control_plane.logs_dir / "pods", python_path=[str(ROOT)])
    try:
        runner.start()
        runner.wait_node_ready(60)
    except Exception as err:  # noqa: BLE001
        runner.stop()
        _state["failed"] = True
        pytest.fail(f"the pod runner did not start: {err!r}", pytrace=False)
    yield runner
    runner.stop()


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Iterator[Kube]:
    assert control_plane.kubeconfig is not None, "the control plane has started"
    client = Kube(control_plane.kubeconfig)
    yield client
    client.close()


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    prefix = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower().removeprefix("test_"))[:20].strip("-")
    name = create_namespace(kube, prefix)
    yield name
    kube.delete(f"/api/v1/namespaces/{name}")


@pytest.fixture
def own_statuses(operator: OperatorProcess, kube: Kube, namespace: str) -> Iterator[str]:
    """A namespace whose benchmarks' statuses the test writes itself: the tier's operator (it watches every
    namespace) is stopped meanwhile, else it would start running them and write its own phases over
    theirs. It starts again once the namespace is gone."""
    operator.stop()
    try:
        yield namespace
        kube.delete(f"/api/v1/namespaces/{namespace}")
        wait_for(lambda: kube.get_or_none(f"/api/v1/namespaces/{namespace}") is None, 120, what=f"{namespace} gone")
    finally:
        operator.start()


@pytest.fixture(scope="session")
def installed(control_plane: ControlPlane, kube: Kube) -> ControlPlane:
    """CRD + RBAC installed with kubectl, as a user would."""
    install_manifests(control_plane, kube)
    return control_plane


@pytest.fixture(scope="session")
def operator(installed: ControlPlane, pod_runner: PodRunner) -> Iterator[OperatorProcess]:
    kubeconfig = installed.kubeconfig_for_service_account("poolbench-system", "poolbench-operator")
    op = OperatorProcess(kubeconfig, installed.logs_dir / "operator.log")
    op.start()
    yield op
    op.stop()
    print("\n--- operator log (tail) ---\n" + "\n".join(op.log().splitlines()[-60:]))
