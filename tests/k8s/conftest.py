"""Fixtures for tests against a real Kubernetes control plane (no Docker, no kubelet).

- ``control_plane`` (session): etcd + kube-apiserver + kube-controller-manager + kube-scheduler from
  $POOLBENCH_K8S_BIN (else ``hack/build-control-plane.sh | tail -1``). Fails, never skips.
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
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TypedDict

import pytest

from .controlplane import ROOT, ControlPlane, ControlPlaneError
from .kube import Kube, wait_for
from .podrunner import PodRunner


class _State(TypedDict):
    failed: bool  # a test failed: keep the logs
    kept_logs: str | None  # where they were kept


_state: _State = {"failed": False, "kept_logs": None}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        _state["failed"] = True


def pytest_terminal_summary(terminalreporter):
    if _state["kept_logs"]:
        terminalreporter.write_sep("-", f"k8s logs kept in {_state['kept_logs']}")


@pytest.fixture(scope="session")
def control_plane():
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
def pod_runner(control_plane):
    if not shutil.which("ip") or not shutil.which("setpriv"):
        pytest.fail("the pod runner needs iproute2 (ip netns) and util-linux (setpriv)", pytrace=False)
    runner = PodRunner(control_plane.kubeconfig, logs_dir=control_plane.logs_dir / "pods",
                       python_path=[str(ROOT)])
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
def kube(control_plane):
    client = Kube(control_plane.kubeconfig)
    yield client
    client.close()


def create_namespace(kube: Kube, prefix: str = "t", labels: dict[str, str] | None = None) -> str:
    """A fresh namespace, returned once its default ServiceAccount exists (pods need it)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": name, "labels": labels or {}}})
    wait_for(lambda: kube.get_or_none(f"/api/v1/namespaces/{name}/serviceaccounts/default"), 30,
             what=f"ServiceAccount {name}/default")
    return name


@pytest.fixture
def namespace(kube, request):
    prefix = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower().removeprefix("test_"))[:20].strip("-")
    name = create_namespace(kube, prefix)
    yield name
    kube.delete(f"/api/v1/namespaces/{name}")


# -- the operator under test ------------------------------------------------------------------------
GROUP_PATH = "/apis/poolbench.dev/v1alpha1"


def kubectl(control_plane, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(["kubectl", f"--kubeconfig={control_plane.kubeconfig}", *args], capture_output=True,
                          text=True, input=input, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


class OperatorProcess:
    """`kopf run` as a subprocess, so tests can also kill it."""

    def __init__(self, kubeconfig: Path, log_path: Path):
        self.kubeconfig, self.log_path = kubeconfig, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "POOLBENCH_POSTGRES_ADDRESS": "pod-ip",
               "POOLBENCH_WATCH_TIMEOUT": "30", "PYTHONPATH": str(ROOT)}
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kopf", "run", "-m", "poolbench_operator.handlers", "--standalone",
                 "--all-namespaces", "--verbose"],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
            )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(scope="session")
def installed(control_plane, kube):
    """CRD + RBAC installed with kubectl, as a user would."""
    kubectl(control_plane, "apply", "--server-side", "-f", str(ROOT / "manifests/crd.yaml"))
    kubectl(control_plane, "wait", "--for=condition=Established", "crd/poolbenchmarks.poolbench.dev",
            "--timeout=60s")
    kubectl(control_plane, "apply", "-f", str(ROOT / "manifests/rbac.yaml"))
    wait_for(lambda: kube.get_or_none("/api/v1/namespaces/poolbench-system/serviceaccounts/poolbench-operator"),
             30, what="operator ServiceAccount")
    return control_plane


@pytest.fixture(scope="session")
def operator(installed, pod_runner):
    kubeconfig = installed.kubeconfig_for_service_account("poolbench-system", "poolbench-operator")
    op = OperatorProcess(kubeconfig, installed.logs_dir / "operator.log")
    op.start()
    yield op
    op.stop()
    print("\n--- operator log (tail) ---\n" + "\n".join(op.log().splitlines()[-60:]))
