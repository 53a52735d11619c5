"""The operator under test on a control plane: namespaces, kubectl, the CRD and RBAC, ``kopf run``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Protocol

from .controlplane import ROOT, ControlPlane, free_port
from .kube import Kube, wait_for


class HasKubeconfig(Protocol):
    """A control plane or a cluster: whatever ``kubectl`` can point at."""

    @property
    def kubeconfig(self) -> Path | None: ...


def create_namespace(kube: Kube, prefix: str = "t", labels: dict[str, str] | None = None) -> str:
    """A fresh namespace, returned once its default ServiceAccount exists (pods need it)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kube.create(
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}},
    )
    wait_for(
        lambda: kube.get_or_none(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        30,
        what=f"ServiceAccount {name}/default",
    )
    return name


def kubectl(
    control_plane: HasKubeconfig, *args: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``kubectl`` against ``control_plane`` (anything with a ``kubeconfig``); raises on failure if ``check``."""
    proc = subprocess.run(
        ["kubectl", f"--kubeconfig={control_plane.kubeconfig}", *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def install_crd(control_plane: ControlPlane, kube: Kube, path: Path, name: str) -> None:
    """The CRD in ``path`` (named ``name``) applied with kubectl and Established."""
    kubectl(control_plane, "apply", "--server-side", "-f", str(path))
    # `kubectl wait` fails outright on a CRD whose status has no conditions yet (a fresh one, for a moment).
    wait_for(
        lambda: (kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}").get("status") or {}).get(
            "conditions"
        ),
        60,
        what=f"the first status conditions of {name}",
    )
    kubectl(control_plane, "wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


def install_manifests(control_plane: ControlPlane, kube: Kube) -> None:
    """CRD + RBAC installed with kubectl, as a user would."""
    install_crd(control_plane, kube, ROOT / "manifests/crd.yaml", "poolbenchmarks.poolbench.dev")
    kubectl(control_plane, "apply", "-f", str(ROOT / "manifests/rbac.yaml"))
    wait_for(
        lambda: kube.get_or_none("/api/v1/namespaces/poolbench-system/serviceaccounts/poolbench-operator"),
        30,
        what="operator ServiceAccount",
    )


class OperatorProcess:
    """`kopf run` as a subprocess, so tests can also kill it."""

    def __init__(self, kubeconfig: Path, log_path: Path):
        self.kubeconfig, self.log_path = kubeconfig, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = free_port()

    @property
    def metrics_url(self) -> str:
        """The operator's own /metrics (POOLBENCH_METRICS_PORT, a free port of this machine)."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "POOLBENCH_POSTGRES_ADDRESS": "pod-ip",
            "POOLBENCH_WATCH_TIMEOUT": "30",
            "POOLBENCH_METRICS_PORT": str(self.metrics_port),
            "PYTHONPATH": str(ROOT),
        }
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kopf",
                    "run",
                    "-m",
                    "poolbench_operator.handlers",
                    "--standalone",
                    "--all-namespaces",
                    "--verbose",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
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
