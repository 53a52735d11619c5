"""``poolbench plan --dsn --kube``: the user's own app in a real cluster against its own PostgreSQL.

A PostgreSQL pod (max_connections 30, 3 for superusers: 27 for a normal role), the app as a Deployment of
2 pods that each hold 3 connections (found by their pod IPs), an HPA of 2..8 and maxSurge 50%, and 2
connections of another tenant from the host, and a canary pod holding 3 (labelled app=web but outside
the Deployment's selector by its matchExpressions: another tenant too). The spec's pools open 2 per
replica (2 threads, QueuePool 2 + 0). Known in advance: 27 − 5 others = 22 available; at rest 11 × 2 = 22;
in a rollout 7 + ceil(7 / 2) = 11 pods × 2 = 22 ≤ 22, 8 + 4 = 12 pods × 2 = 24 > 22: 7 fit, refusals
from 8; the HPA's 8 need 24.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml

from tests.conftest import ROOT, make_doc
from tests.harness.kube import wait_for
from tests.harness.operator import create_namespace

pytestmark = pytest.mark.k8s

PASSWORD = "live-Plan-pw-42"
POOLBENCH = str(ROOT / ".venv" / "bin" / "poolbench")

HOLDER = textwrap.dedent("""
    import os, time, psycopg2
    held = [psycopg2.connect(host="db", port=5432, user="postgres", dbname="postgres", connect_timeout=10,
                             application_name="web") for _ in range(3)]
    print("holding", len(held), flush=True)
    while True:
        time.sleep(60)
""")


def postgres_pod(kube: Any, ns: str) -> str:
    """The server, as a StatefulSet behind Service db; its pod IP once ready."""
    labels = {"app": "db"}
    kube.create(
        f"/api/v1/namespaces/{ns}/secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "stringData": {"password": PASSWORD}},
    )
    kube.create(
        f"/api/v1/namespaces/{ns}/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "db"},
            "spec": {"selector": labels, "ports": [{"name": "postgres", "port": 5432, "targetPort": 5432}]},
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
                        "containers": [
                            {
                                "name": "postgres",
                                "image": "postgres:16",
                                "args": ["-c", "max_connections=30", "-c", "superuser_reserved_connections=3"],
                                "ports": [{"containerPort": 5432}],
                                "env": [
                                    {"name": "POSTGRES_USER", "value": "postgres"},
                                    {
                                        "name": "POSTGRES_PASSWORD",
                                        "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}},
                                    },
                                    {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                                ],
                                "readinessProbe": {
                                    "exec": {"command": ["pg_isready", "-U", "postgres", "-h", "127.0.0.1"]},
                                    "periodSeconds": 2,
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
        what="postgres ready",
    )
    return str(kube.get(f"/api/v1/namespaces/{ns}/pods/db-0")["status"]["podIP"])


APP_LABELS = {"app": "web", "track": "stable"}
#: The Deployment's selector needs both parts: a pod of app=web on another track is not the app's.
APP_SELECTOR = {
    "matchLabels": {"app": "web"},
    "matchExpressions": [{"key": "track", "operator": "In", "values": ["stable"]}],
}


def holder_container() -> dict[str, Any]:
    """A container holding 3 connections as the superuser, application_name "web"."""
    return {
        "name": "web",
        "image": "poolbench:dev",
        "command": ["python3", "-c", HOLDER],
        "env": [{"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
    }


def canary_pod(kube: Any, ns: str) -> None:
    """A pod labelled app=web but track=canary, holding 3 connections like the app's pods: outside the
    Deployment's selector (its matchExpressions), so its connections are another tenant's."""
    kube.create(
        f"/api/v1/namespaces/{ns}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web-canary", "labels": {"app": "web", "track": "canary"}},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [holder_container()]},
        },
    )


def app_deployment(kube: Any, ns: str) -> None:
    """2 pods holding 3 connections each, rolling with maxSurge 50%, and an HPA of 2..8 over them."""
    labels = APP_LABELS
    kube.create(
        f"/apis/apps/v1/namespaces/{ns}/deployments",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": APP_SELECTOR,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "50%", "maxUnavailable": 0}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "containers": [holder_container()],
                    },
                },
            },
        },
    )
    kube.create(
        f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 2,
                "maxReplicas": 8,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
                    }
                ],
            },
        },
    )


def backends_by_addr(db_ip: str) -> dict[str | None, int]:
    conn = psycopg2.connect(host=db_ip, port=5432, user="postgres", password=PASSWORD, dbname="postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT host(client_addr), count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                " AND pid <> pg_backend_pid() GROUP BY 1"
            )
            return {addr: int(n) for addr, n in cur.fetchall()}
    finally:
        conn.close()


def test_plan_reads_the_server_the_deployment_and_its_hpa_live(
    kube: Any, pod_runner: Any, control_plane: Any, tmp_path: Path
) -> None:
    ns = create_namespace(kube, "live-plan")
    try:
        db_ip = postgres_pod(kube, ns)
        app_deployment(kube, ns)
        canary_pod(kube, ns)
        pods = wait_for(
            lambda: (
                (
                    [
                        p
                        for p in kube.items(f"/api/v1/namespaces/{ns}/pods", labelSelector="app=web")
                        if p["status"].get("podIP")
                    ]
                    if len(kube.items(f"/api/v1/namespaces/{ns}/pods", labelSelector="app=web")) == 3
                    else None
                )
                or None
            ),
            120,
            what="the app's 2 pods and the canary with IPs",
        )
        pod_ips = {p["status"]["podIP"] for p in pods}
        wait_for(
            lambda: all(backends_by_addr(db_ip).get(ip) == 3 for ip in pod_ips),
            120,
            what="3 connections from each app pod and the canary",
        )
        tenant = [
            psycopg2.connect(
                host=db_ip,
                port=5432,
                user="postgres",
                password=PASSWORD,
                dbname="postgres",
                application_name="reporting",
            )
            for _ in range(2)
        ]
        spec = tmp_path / "web.yaml"
        spec.write_text(
            yaml.safe_dump(
                make_doc(
                    "web",
                    workload={"threads": 2, "role": "app", "engine": {"poolSize": 2, "maxOverflow": 0}},
                    postgres={"maxConnections": 500},
                )
            )
        )
        env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig), "PGPASSWORD": PASSWORD}
        try:
            done = subprocess.run(
                [POOLBENCH, "plan", "--dsn", f"postgresql://postgres@{db_ip}:5432/postgres"]
                + ["--kube", "deployment/web", "--namespace", ns, "--json", str(spec)],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            text = subprocess.run(
                [POOLBENCH, "plan", "--dsn", f"postgresql://postgres@{db_ip}:5432/postgres"]
                + ["--kube", "deployment/web", "-n", ns, str(spec)],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            missing = subprocess.run(
                [POOLBENCH, "plan", "--kube", "deployment/nothing", "-n", ns, str(spec)],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            for conn in tenant:
                conn.close()
    finally:
        kube.delete(f"/api/v1/namespaces/{ns}")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["server"]["maxConnections"] == 30
    assert answer["deployment"] == {
        "namespace": ns,
        "name": "web",
        "replicas": 2,
        "maxSurge": "50%",
        "hpa": {"name": "web", "min": 2, "max": 8},
        "podIPs": 2,
    }
    # The pods' own backends, by their IPs: not counted as others. The canary matches app=web but not
    # the selector's matchExpressions: its 3 are another tenant's (a plan that read matchLabels alone
    # would count 3 pod IPs and 9 here).
    assert answer["appNow"] == 6
    assert sorted(answer["othersByOwner"], key=lambda o: o["count"]) == [
        {"usename": "postgres", "applicationName": "reporting", "count": 2},
        {"usename": "postgres", "applicationName": "web", "count": 3},
    ]
    assert (answer["usable"], answer["others"], answer["available"]) == (27, 5, 22)
    assert (answer["safeAtRest"], answer["safeInRollout"], answer["refusalsFrom"]) == (11, 7, 8)
    assert (answer["hpaMax"], answer["neededAtHpaMax"], answer["maxSurge"]) == (8, 24, "50%")
    assert text.returncode == 0, text.stderr
    assert f"deployment {ns}/web: 2 replicas, HPA web 2..8, maxSurge 50%, 2 pod IPs" in text.stdout
    assert "your HPA's max of 8 replicas + 50% surge (4 pods) need 24" in text.stdout
    assert PASSWORD not in done.stdout + done.stderr + text.stdout + text.stderr
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"poolbench: --kube: deployment {ns}/nothing not found"
