"""Pure builders of a benchmark's child objects (dask-kubernetes style ``build_*``: dicts, no I/O).

Children: a Secret (generated passwords), the Postgres Service and StatefulSet (the spec's limits
as server arguments), and the workload Deployment (starts at 0 replicas; the driver scales it).
Every pod runs as non-root with no privilege escalation, all capabilities dropped, and resource
requests and limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from poolbench.core.spec import PoolBenchmarkSpec
from poolbench.core.workload_env import SUPERUSER, workload_env

POSTGRES_PORT = 5432
METRICS_PORT = 9187
TERMINATION_PATH = "/dev/termination-log"
WORKLOAD_UID = 10001
SECRET_SUPERUSER_KEY = "postgres-password"
SECRET_APP_KEY = "app-password"


@dataclass(frozen=True)
class Names:
    benchmark: str

    @property
    def secret(self) -> str:
        return f"{self.benchmark}-credentials"

    @property
    def postgres(self) -> str:
        return f"{self.benchmark}-postgres"

    @property
    def postgres_pod(self) -> str:
        return f"{self.postgres}-0"

    @property
    def workload(self) -> str:
        return f"{self.benchmark}-workload"


def labels(benchmark: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "poolbench",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/instance": benchmark,
        "app.kubernetes.io/managed-by": "poolbench-operator",
        "poolbench.dev/benchmark": benchmark,
    }


def selector(benchmark: str, component: str) -> dict[str, str]:
    return {"poolbench.dev/benchmark": benchmark, "app.kubernetes.io/component": component}


def container_security() -> dict:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def build_secret(benchmark: str, superuser_password: str, app_password: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": Names(benchmark).secret, "labels": labels(benchmark, "credentials")},
        "type": "Opaque",
        "stringData": {SECRET_SUPERUSER_KEY: superuser_password, SECRET_APP_KEY: app_password},
    }


def postgres_args(spec: PoolBenchmarkSpec) -> list[str]:
    pg = spec.postgres
    args = ["-c", f"max_connections={pg.max_connections}",
            "-c", f"superuser_reserved_connections={pg.superuser_reserved_connections}"]
    for key, value in sorted(pg.settings.items()):
        args += ["-c", f"{key}={value}"]
    return args


def build_postgres_service(benchmark: str) -> dict:
    names = Names(benchmark)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": names.postgres, "labels": labels(benchmark, "postgres")},
        "spec": {
            "selector": selector(benchmark, "postgres"),
            "ports": [{"name": "postgres", "port": POSTGRES_PORT, "targetPort": "postgres"}],
        },
    }


def build_postgres_statefulset(benchmark: str, spec: PoolBenchmarkSpec) -> dict:
    names = Names(benchmark)
    secret_ref = {"secretKeyRef": {"name": names.secret, "key": SECRET_SUPERUSER_KEY}}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": names.postgres, "labels": labels(benchmark, "postgres")},
        "spec": {
            "serviceName": names.postgres,
            "replicas": 1,
            "selector": {"matchLabels": selector(benchmark, "postgres")},
            "template": {
                "metadata": {"labels": labels(benchmark, "postgres")},
                "spec": {
                    # The image's own postgres user, so the entrypoint initialises PGDATA as that user.
                    "securityContext": {"runAsNonRoot": True, "runAsUser": spec.postgres.run_as_user,
                                        "runAsGroup": spec.postgres.run_as_user,
                                        "fsGroup": spec.postgres.run_as_user},
                    "automountServiceAccountToken": False,
                    "containers": [{
                        "name": "postgres",
                        "image": spec.postgres.image,
                        "args": postgres_args(spec),
                        "ports": [{"name": "postgres", "containerPort": POSTGRES_PORT}],
                        "env": [
                            {"name": "POSTGRES_USER", "value": SUPERUSER},
                            {"name": "POSTGRES_DB", "value": "postgres"},
                            {"name": "POSTGRES_PASSWORD", "valueFrom": secret_ref},
                            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                        ],
                        "readinessProbe": {
                            "exec": {"command": ["pg_isready", "-U", SUPERUSER, "-h", "127.0.0.1"]},
                            "periodSeconds": 2,
                            "failureThreshold": 3,
                        },
                        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"},
                                      "limits": {"cpu": "2", "memory": "1Gi"}},
                        "securityContext": container_security(),
                        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"},
                                         {"name": "run", "mountPath": "/var/run/postgresql"}],
                    }],
                    "volumes": [{"name": "data", "emptyDir": {}}, {"name": "run", "emptyDir": {}}],
                },
            },
        },
    }


def build_workload_deployment(benchmark: str, spec: PoolBenchmarkSpec, image: str) -> dict:
    """The replicas. After the hold each pod stays up (done), so a Deployment never restarts a finished one."""
    names = Names(benchmark)
    password_key = SECRET_APP_KEY if spec.workload.role == "app" else SECRET_SUPERUSER_KEY
    env: list[dict[str, Any]] = [
        {"name": k, "value": v} for k, v in sorted(workload_env(spec, exit_after_hold=False).items())
    ]
    env += [
        {"name": "PGHOST", "value": names.postgres},
        {"name": "PGPORT", "value": str(POSTGRES_PORT)},
        {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": names.secret, "key": password_key}}},
        {"name": "POOLBENCH_APP_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POOLBENCH_METRICS_PORT", "value": str(METRICS_PORT)},
        {"name": "POOLBENCH_SUMMARY_PATH", "value": TERMINATION_PATH},
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": names.workload, "labels": labels(benchmark, "workload")},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": selector(benchmark, "workload")},
            "template": {
                "metadata": {"labels": labels(benchmark, "workload")},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": WORKLOAD_UID,
                                        "runAsGroup": WORKLOAD_UID},
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "workload",
                        "image": image,
                        "command": ["python", "-m", "workload"],
                        "env": env,
                        "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
                        "terminationMessagePath": TERMINATION_PATH,
                        "terminationMessagePolicy": "File",
                        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                                      "limits": {"cpu": "500m", "memory": "256Mi"}},
                        "securityContext": container_security(),
                    }],
                },
            },
        },
    }


def build_children(benchmark: str, spec: PoolBenchmarkSpec, *, workload_image: str,
                   superuser_password: str, app_password: str) -> list[dict]:
    """Everything one benchmark owns, in creation order."""
    return [
        build_secret(benchmark, superuser_password, app_password),
        build_postgres_service(benchmark),
        build_postgres_statefulset(benchmark, spec),
        build_workload_deployment(benchmark, spec, workload_image),
    ]
