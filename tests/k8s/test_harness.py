"""The k8s test harness itself: a real control plane plus the stand-in kubelet run real workloads."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from typing import Any, cast

import psycopg2
import pytest

from tests.harness.kube import KubeError, wait_for
from tests.harness.operator import create_namespace
from tests.harness.podrunner import netns_list, pid_alive

pytestmark = pytest.mark.k8s

HTTP_SERVER = textwrap.dedent("""
    import http.server, os
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = ("hello from " + os.environ["HOSTNAME"] + " in " + os.environ["POD_NAMESPACE"]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    http.server.HTTPServer(("0.0.0.0", 8080), H).serve_forever()
""")

PG_PASSWORD = "s3cret-pw"


def http_deployment(name: str, replicas: int = 2) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [
                        {
                            "name": "web",
                            "image": "python:3-slim",
                            "command": ["python", "-c", HTTP_SERVER],
                            "env": [
                                {
                                    "name": "POD_NAMESPACE",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                                }
                            ],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
                        }
                    ],
                },
            },
        },
    }


def pods_of(kube: Any, ns: str, selector: str) -> list[dict[str, Any]]:
    return cast("list[dict[str, Any]]", kube.items(f"/api/v1/namespaces/{ns}/pods", labelSelector=selector))


def test_api_server_ready_and_kubectl_works(control_plane: Any, kube: Any) -> None:
    assert kube.get("/readyz", raw=True) == b"ok"
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed on PATH for this test"
    out = subprocess.run(
        [kubectl, "--kubeconfig", str(control_plane.kubeconfig), "get", "ns", "-o", "name"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "namespace/default" in out.stdout.split()
    assert "namespace/kube-system" in out.stdout.split()


def test_service_account_kubeconfig_has_only_its_rbac(control_plane: Any, kube: Any, namespace: str) -> None:
    kube.create(
        f"/api/v1/namespaces/{namespace}/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "op"}},
    )
    from tests.harness.kube import Kube

    sa = Kube(control_plane.kubeconfig_for_service_account(namespace, "op"))
    try:
        with pytest.raises(KubeError) as denied:
            sa.get(f"/api/v1/namespaces/{namespace}/pods")
        assert denied.value.status == 403
        kube.create(
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "pods"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
            },
        )
        kube.create(
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "pods"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pods"},
                "subjects": [{"kind": "ServiceAccount", "name": "op", "namespace": namespace}],
            },
        )
        wait_for(lambda: sa.get(f"/api/v1/namespaces/{namespace}/pods") is not None, 20, what="RBAC grant")
        with pytest.raises(KubeError) as still_denied:
            sa.get("/api/v1/namespaces/default/pods")
        assert still_denied.value.status == 403
    finally:
        sa.close()


def test_node_is_ready_untainted_and_its_lease_renewed(pod_runner: Any, kube: Any) -> None:
    node = kube.get(f"/api/v1/nodes/{pod_runner.node_name}")
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
    assert not node["spec"].get("taints")
    assert node["status"]["allocatable"]["pods"] == "110"
    path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{pod_runner.node_name}"
    first = kube.get(path)["spec"]["renewTime"]
    assert kube.get(path)["spec"]["holderIdentity"] == pod_runner.node_name
    wait_for(lambda: kube.get(path)["spec"]["renewTime"] != first, 25, what="a lease renewal")


def test_deployment_serves_http_through_pod_proxy(pod_runner: Any, kube: Any, namespace: str) -> None:
    kube.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", http_deployment("web"))
    wait_for(
        lambda: kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/web")["status"].get("readyReplicas") == 2,
        60,
        what="2 ready replicas",
    )
    pods = pods_of(kube, namespace, "app=web")
    assert len(pods) == 2
    for pod in pods:
        ip = ipaddress.ip_address(pod["status"]["podIP"])
        assert ip.is_private
        assert ip.is_global is False
        assert not ip.is_loopback
        assert pod["status"]["podIPs"] == [{"ip": str(ip)}]
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["nodeName"] == pod_runner.node_name  # bound by the real kube-scheduler
        name = pod["metadata"]["name"]
        body = kube.get(f"/api/v1/namespaces/{namespace}/pods/{name}:8080/proxy/", raw=True, timeout=20)
        assert body.decode() == f"hello from {name} in {namespace}"


@pytest.fixture(scope="module")
def postgres(kube: Any, pod_runner: Any) -> Iterator[tuple[str, Any]]:
    """A postgres:16 StatefulSet + Service, password from a Secret, limits from the container args."""
    ns = create_namespace(kube, "pg")
    labels = {"app": "db"}
    kube.create(
        f"/api/v1/namespaces/{ns}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db-credentials"},
            "stringData": {"postgres-password": PG_PASSWORD},
        },
    )
    kube.create(
        f"/api/v1/namespaces/{ns}/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "db"},
            "spec": {"selector": labels, "ports": [{"name": "postgres", "port": 5432, "targetPort": "postgres"}]},
        },
    )
    kube.create(
        f"/apis/apps/v1/namespaces/{ns}/statefulsets",
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db"},
            "spec": {
                "serviceName": "db",
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 999, "fsGroup": 999},
                        "automountServiceAccountToken": False,
                        "containers": [
                            {
                                "name": "postgres",
                                "image": "postgres:16",
                                "args": ["-c", "max_connections=30", "-c", "superuser_reserved_connections=3"],
                                "ports": [{"name": "postgres", "containerPort": 5432}],
                                "env": [
                                    {"name": "POSTGRES_USER", "value": "postgres"},
                                    {
                                        "name": "POSTGRES_PASSWORD",
                                        "valueFrom": {
                                            "secretKeyRef": {"name": "db-credentials", "key": "postgres-password"}
                                        },
                                    },
                                    {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                                ],
                                "readinessProbe": {
                                    "exec": {"command": ["pg_isready", "-U", "postgres", "-h", "127.0.0.1"]},
                                    "periodSeconds": 2,
                                    "failureThreshold": 3,
                                },
                            }
                        ],
                    },
                },
            },
        },
    )
    wait_for(
        lambda: kube.get(f"/apis/apps/v1/namespaces/{ns}/statefulsets/db")["status"].get("readyReplicas") == 1,
        120,
        what="postgres StatefulSet ready",
    )
    pod = kube.get(f"/api/v1/namespaces/{ns}/pods/db-0")
    yield ns, pod
    kube.delete(f"/api/v1/namespaces/{ns}")


def test_postgres_statefulset_reachable_from_host_with_password(postgres: Any) -> None:
    ns, pod = postgres
    ip = pod["status"]["podIP"]
    assert ipaddress.ip_address(ip).is_private
    conn = psycopg2.connect(
        host=ip, port=5432, user="postgres", password=PG_PASSWORD, dbname="postgres", connect_timeout=10
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW max_connections")
            row = cur.fetchone()
            assert row is not None
            assert row[0] == "30"
            cur.execute("SHOW superuser_reserved_connections")
            row = cur.fetchone()
            assert row is not None
            assert row[0] == "3"
    finally:
        conn.close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(
            host=ip, port=5432, user="postgres", password="wrong", dbname="postgres", connect_timeout=10
        ).close()


CLIENT = textwrap.dedent("""
    import json, os, psycopg2
    out = {}
    for host in ["db", "db." + os.environ["NS"], "db." + os.environ["NS"] + ".svc.cluster.local"]:
        with psycopg2.connect(host=host, port=5432, user="postgres", dbname="postgres", connect_timeout=5) as c:
            with c.cursor() as cur:
                cur.execute("SELECT host(inet_server_addr()), current_setting('max_connections')")
                out[host] = list(cur.fetchone())
    out["uid"] = os.getuid()
    out["app"] = os.environ["APP_NAME"]
    with open(os.environ["SUMMARY_PATH"], "w") as fh:
        json.dump(out, fh)
    print("client done", out)
""")


def test_pod_resolves_service_name_and_reports_termination_message(postgres: Any, kube: Any, pod_runner: Any) -> None:
    ns, db_pod = postgres
    kube.create(
        f"/api/v1/namespaces/{ns}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "client"},
            "spec": {
                "restartPolicy": "Never",
                "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001},
                "containers": [
                    {
                        "name": "client",
                        "image": "poolbench:dev",
                        "command": ["python3", "-c", CLIENT],
                        "terminationMessagePath": "/dev/termination-log",
                        "env": [
                            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                            {"name": "APP_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {
                                "name": "PGPASSWORD",
                                "valueFrom": {"secretKeyRef": {"name": "db-credentials", "key": "postgres-password"}},
                            },
                            {"name": "SUMMARY_PATH", "value": "/dev/termination-log"},
                        ],
                    }
                ],
            },
        },
    )
    pod = wait_for(
        lambda: (
            (p := kube.get(f"/api/v1/namespaces/{ns}/pods/client"))["status"].get("phase") in ("Succeeded", "Failed")
            and p
        ),
        60,
        what="client pod to finish",
    )
    log = pod_runner.container_log(ns, "client", "client")
    assert pod["status"]["phase"] == "Succeeded", log
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0
    assert term["reason"] == "Completed"
    summary = json.loads(term["message"])
    db_ip = db_pod["status"]["podIP"]
    for host in ("db", f"db.{ns}", f"db.{ns}.svc.cluster.local"):
        assert summary[host] == [db_ip, "30"]
    assert summary["uid"] == 10001
    assert summary["app"] == "client"
    assert "client done" in log


def test_failing_container_restarts_with_backoff_and_termination_message(
    pod_runner: Any, kube: Any, namespace: str
) -> None:
    script = "import os, sys; open(os.environ['MSG'], 'w').write('boom: ' + os.environ['HOSTNAME']); sys.exit(1)"
    kube.create(
        f"/api/v1/namespaces/{namespace}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "crasher"},
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": "poolbench:dev",
                        "command": ["python", "-c", script],
                        "env": [{"name": "MSG", "value": "/dev/termination-log"}],
                    }
                ]
            },
        },
    )

    def restarted_twice() -> Any:
        pod = kube.get(f"/api/v1/namespaces/{namespace}/pods/crasher")
        statuses = pod["status"].get("containerStatuses") or []
        return statuses and statuses[0]["restartCount"] >= 2 and pod

    pod = wait_for(restarted_twice, 60, what="restartCount >= 2")
    status = pod["status"]["containerStatuses"][0]
    last = status["lastState"]["terminated"]
    assert last["exitCode"] == 1
    assert last["reason"] == "Error"
    assert last["message"] == "boom: crasher"
    assert pod["status"]["phase"] == "Running"  # restartPolicy Always: the pod keeps running
    waiting = wait_for(
        lambda: kube.get(f"/api/v1/namespaces/{namespace}/pods/crasher")["status"]["containerStatuses"][0]["state"].get(
            "waiting"
        ),
        30,
        interval=0.1,
        what="back-off state",
    )
    assert waiting["reason"] == "CrashLoopBackOff"


def test_namespace_deletion_removes_pods_processes_and_netns(pod_runner: Any, kube: Any) -> None:
    ns = create_namespace(kube, "gone")
    kube.create(f"/apis/apps/v1/namespaces/{ns}/deployments", http_deployment("web"))
    wait_for(
        lambda: kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/web")["status"].get("readyReplicas") == 2,
        60,
        what="2 ready replicas",
    )
    infos = [pod_runner.pod_info(ns, p["metadata"]["name"]) for p in pods_of(kube, ns, "app=web")]
    assert all(infos)
    assert len(infos) == 2
    pids = [pid for info in infos for pid in info["pids"].values()]
    netns = [info["netns"] for info in infos]
    assert len(pids) == 2
    assert all(pid_alive(pid) for pid in pids)
    assert set(netns) <= set(netns_list())

    kube.delete(f"/api/v1/namespaces/{ns}")
    wait_for(lambda: kube.get_or_none(f"/api/v1/namespaces/{ns}") is None, 90, what=f"namespace {ns} gone")
    assert not [pid for pid in pids if pid_alive(pid)]
    assert not set(netns) & set(netns_list())
    assert not [d for d in os.listdir("/etc/netns") if d in netns] if os.path.isdir("/etc/netns") else True
