"""The operator's pod-log follower against a real API server: what it says when it may not read a pod's
log (RBAC), when no kubelet serves it (the stand-in kubelet of this tier serves none), and when the pod
is gone. Reading a log that is served is the node tier's (tests/node)."""

from __future__ import annotations

from typing import Any

import kubernetes
import pytest

from poolbench_operator.podlog import FORBIDDEN, PodLogSource
from tests.harness.kube import wait_for

pytestmark = pytest.mark.k8s

POD = "db-0"
CONTAINER = "postgres"


def core_api(kubeconfig: Any) -> Any:
    return kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(config_file=str(kubeconfig)))


def running_pod(kube: Any, namespace: str) -> None:
    kube.create(
        f"/api/v1/namespaces/{namespace}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": POD},
            "spec": {
                "containers": [
                    {
                        "name": CONTAINER,
                        "image": "poolbench:dev",
                        "command": ["python", "-c", "import time; time.sleep(600)"],
                    }
                ]
            },
        },
    )

    def running() -> Any:
        statuses = kube.get(f"/api/v1/namespaces/{namespace}/pods/{POD}")["status"].get("containerStatuses") or []
        return statuses and "running" in statuses[0]["state"]

    wait_for(running, 60, what=f"pod {POD} running")


def reader_without_pods_log(control_plane: Any, kube: Any, namespace: str) -> Any:
    """A ServiceAccount that may get pods but not pods/log."""
    kube.create(
        f"/api/v1/namespaces/{namespace}/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
    )
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    kube.create(
        f"{rbac}/roles",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
        },
    )
    kube.create(
        f"{rbac}/rolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    api = core_api(control_plane.kubeconfig_for_service_account(namespace, "reader"))
    wait_for(lambda: api.read_namespaced_pod(POD, namespace), 20, what="RBAC grant")
    return api


def test_the_follower_says_why_it_cannot_read_and_never_hands_over_a_line(
    control_plane: Any, kube: Any, pod_runner: Any, namespace: str
) -> None:
    running_pod(kube, namespace)

    forbidden = PodLogSource(reader_without_pods_log(control_plane, kube, namespace), namespace, POD, CONTAINER)
    try:
        assert forbidden.wait_settled(30) == FORBIDDEN == "the operator may not read pods/log: grant get on pods/log"
        assert forbidden.read_lines() == []
    finally:
        forbidden.close()

    unserved = PodLogSource(core_api(control_plane.kubeconfig), namespace, POD, CONTAINER)
    try:
        reason = unserved.wait_settled(30)
        assert reason is not None
        assert reason.startswith("the PostgreSQL pod's log is not served"), reason
        assert f"containerLogs/{namespace}/{POD}/{CONTAINER}" in reason  # the API server's own message
        kube.delete(f"/api/v1/namespaces/{namespace}/pods/{POD}", query={"gracePeriodSeconds": "0"})
        gone = f"the PostgreSQL pod {namespace}/{POD} is gone"
        wait_for(lambda: unserved.unavailable() == gone, 60, interval=0.1, what="the pod is gone")
        assert unserved.read_lines() == []
    finally:
        unserved.close()
