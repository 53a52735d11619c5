"""The user's side of an own-app benchmark on a real node, made by the tests themselves: a PostgreSQL
the user runs (a pod and Service in the cluster, or a server on this machine outside it), a monitor
role and its Secret, the user's app (a Deployment running ``pgbench`` with 4 steady connections per
pod) and another tenant (a pod or a process holding idle connections under its own role).

Every server gets the same roles: ``app`` (owns database ``appdb``, with pgbench's tables), ``tenant``
and the monitor ``pbmonitor`` (``pg_monitor``, ``CONNECTION LIMIT``). Passwords are random, live in
Secrets or in this process only, and never reach an argv.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import yaml

from poolbench.core.spec import ALLOW_SCALING_ANNOTATION
from poolbench.local.embedded import LocalPostgres
from tests.harness.cluster import GATEWAY, POD_CIDR, Cluster
from tests.harness.kube import Kube, wait_for
from tests.harness.operator import kubectl
from tests.harness.release import POSTGRES_IMAGE, WORKLOAD_IMAGE

APP_ROLE = "app"
TENANT_ROLE = "tenant"
MONITOR_ROLE = "pbmonitor"
APP_DB = "appdb"
MONITOR_CONNECTION_LIMIT = 3
#: pgbench's clients per pod: each holds one connection for the pod's whole life (no -C).
CLIENTS_PER_POD = 4
TENANT_CONNECTIONS = 3
#: The chart's default ``monitorSecretNames``: the only Secret name the operator may read.
MONITOR_SECRET = "pb-monitor"
TENANT_APPLICATION = "tenant-batch"
#: The uid of the postgres image's postgres user and of the workload image's user.
POSTGRES_UID = 999
WORKLOAD_UID = 10001
#: A pod's own IP label on pg_stat_activity rows: the tests compare client_addr with it.
APP_LABEL = "app.kubernetes.io/name"


def restricted_container() -> dict[str, Any]:
    """A container that Pod Security Admission ``restricted`` admits."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def new_password() -> str:
    return secrets.token_hex(16)


@dataclass
class Passwords:
    superuser: str = field(default_factory=new_password)
    app: str = field(default_factory=new_password)
    tenant: str = field(default_factory=new_password)
    monitor: str = field(default_factory=new_password)


@dataclass
class UserDatabase:
    """Where the user's PostgreSQL answers, as the app, the tenant and the benchmark name it."""

    name: str  # its Secrets are named after it
    namespace: str  # where its Secrets are (the benchmark's namespace)
    host: str  # as pods reach it: a Service's DNS name or the host address
    port: int
    passwords: Passwords = field(default_factory=Passwords)

    @property
    def app_secret(self) -> str:
        """The app's and the tenant's passwords (keys ``password``, ``tenant-password``)."""
        return f"{self.name}-app"

    #: The monitor's login, under the keys ``spec.database.monitorSecret`` defaults to, by the name the
    #: chart lets the operator read (values.monitorSecretNames): one user database per namespace.
    monitor_secret: str = MONITOR_SECRET

    def database_spec(self) -> dict[str, Any]:
        """``spec.database`` of a benchmark against this server (no TLS on the tests' servers)."""
        return {
            "host": self.host,
            "port": self.port,
            "dbname": APP_DB,
            "sslmode": "disable",
            "monitorSecret": {"name": self.monitor_secret},
        }


# -- Secrets -----------------------------------------------------------------------------------------
def create_secrets(kube: Kube, db: UserDatabase) -> None:
    """The monitor's login (the keys ``spec.database.monitorSecret`` defaults to) and the app's password."""
    secrets_path = f"/api/v1/namespaces/{db.namespace}/secrets"
    kube.create(
        secrets_path,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": db.monitor_secret},
            "type": "Opaque",
            "stringData": {"username": MONITOR_ROLE, "password": db.passwords.monitor},
        },
    )
    kube.create(
        secrets_path,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": db.app_secret},
            "type": "Opaque",
            "stringData": {"password": db.passwords.app, "tenant-password": db.passwords.tenant},
        },
    )


# -- the roles and pgbench's tables ------------------------------------------------------------------
#: Run by psql with the passwords in its environment (``\getenv``), never on a command line.
ROLES_SQL = f"""\\set ON_ERROR_STOP on
\\getenv app_pw APP_PASSWORD
\\getenv tenant_pw TENANT_PASSWORD
\\getenv monitor_pw MONITOR_PASSWORD
CREATE ROLE {APP_ROLE} LOGIN PASSWORD :'app_pw';
CREATE ROLE {TENANT_ROLE} LOGIN PASSWORD :'tenant_pw';
CREATE ROLE {MONITOR_ROLE} LOGIN PASSWORD :'monitor_pw' CONNECTION LIMIT {MONITOR_CONNECTION_LIMIT} IN ROLE pg_monitor;
CREATE DATABASE {APP_DB} OWNER {APP_ROLE};
"""

#: The postgres image's init hook: the roles, then pgbench's smallest tables owned by the app role.
INIT_SCRIPT = f"""#!/bin/sh
set -e
psql --no-psqlrc --username "$POSTGRES_USER" --dbname postgres <<'EOSQL'
{ROLES_SQL}EOSQL
pgbench --initialize --scale=1 --quiet --username {APP_ROLE} {APP_DB}
"""


# -- a PostgreSQL in the cluster ----------------------------------------------------------------------
def create_cluster_database(
    kube: Kube, namespace: str, name: str = "userdb", max_connections: int = 100
) -> UserDatabase:
    """A PostgreSQL pod and Service the user runs (not poolbench's): the roles made at init, scram
    passwords for TCP, a readiness check that opens no session. Returns once it accepts connections."""
    db = UserDatabase(name, namespace, f"{name}.{namespace}.svc", 5432)
    create_secrets(kube, db)
    admin_secret = f"{name}-admin"
    kube.create(
        f"/api/v1/namespaces/{namespace}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": admin_secret},
            "type": "Opaque",
            "stringData": {
                "superuser": db.passwords.superuser,
                "app": db.passwords.app,
                "tenant": db.passwords.tenant,
                "monitor": db.passwords.monitor,
            },
        },
    )
    kube.create(
        f"/api/v1/namespaces/{namespace}/configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{name}-init"},
            "data": {"10-roles.sh": INIT_SCRIPT},
        },
    )

    def from_admin(key: str) -> dict[str, Any]:
        return {"secretKeyRef": {"name": admin_secret, "key": key}}

    labels = {APP_LABEL: name}
    kube.create(
        f"/api/v1/namespaces/{namespace}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": POSTGRES_UID,
                    "runAsGroup": POSTGRES_UID,
                    "fsGroup": POSTGRES_UID,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 5,
                "containers": [
                    {
                        "name": "postgres",
                        "image": POSTGRES_IMAGE,
                        "imagePullPolicy": "Never",
                        "args": ["-c", f"max_connections={max_connections}", "-c", "lc_messages=C"],
                        "env": [
                            {"name": "POSTGRES_USER", "value": "postgres"},
                            {"name": "POSTGRES_PASSWORD", "valueFrom": from_admin("superuser")},
                            {"name": "APP_PASSWORD", "valueFrom": from_admin("app")},
                            {"name": "TENANT_PASSWORD", "valueFrom": from_admin("tenant")},
                            {"name": "MONITOR_PASSWORD", "valueFrom": from_admin("monitor")},
                            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                        ],
                        "ports": [{"name": "postgres", "containerPort": 5432}],
                        # A connect without a startup packet: no session, nothing for the monitor to count.
                        "readinessProbe": {"tcpSocket": {"port": 5432}, "periodSeconds": 1},
                        "securityContext": restricted_container(),
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                            {"name": "run", "mountPath": "/var/run/postgresql"},
                            {"name": "init", "mountPath": "/docker-entrypoint-initdb.d"},
                        ],
                    }
                ],
                "volumes": [
                    {"name": "data", "emptyDir": {}},
                    {"name": "run", "emptyDir": {}},
                    {"name": "init", "configMap": {"name": f"{name}-init"}},
                ],
            },
        },
    )
    kube.create(
        f"/api/v1/namespaces/{namespace}/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": labels, "ports": [{"name": "postgres", "port": 5432, "targetPort": "postgres"}]},
        },
    )
    wait_for(lambda: pod_ready(kube, namespace, name), 180, interval=0.5, what=f"the user's PostgreSQL pod {name}")
    return db


def pod_ready(kube: Kube, namespace: str, name: str) -> bool:
    pod = kube.get_or_none(f"/api/v1/namespaces/{namespace}/pods/{name}")
    conditions = ((pod or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def cluster_sql(cluster: Cluster, namespace: str, pod: str, query: str) -> list[list[str]]:
    """``query``'s rows from the user's PostgreSQL pod, as its superuser over the pod's own socket."""
    proc = kubectl(
        cluster,
        "-n",
        namespace,
        "exec",
        pod,
        "--",
        "psql",
        "--no-psqlrc",
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-AtF",
        "\t",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        query,
    )
    return [line.split("\t") for line in proc.stdout.splitlines() if line]


# -- a PostgreSQL outside the cluster ----------------------------------------------------------------
@dataclass
class HostDatabase:
    """A PostgreSQL on this machine, outside the cluster, listening on the pod bridge's address (what
    pods reach of their node) and on loopback for the tests' own superuser."""

    server: LocalPostgres
    db: UserDatabase

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with contextlib.closing(psycopg2.connect(**self.server.connect_kwargs())) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(query, params)
                return list(cur.fetchall()) if cur.description else []

    def log(self) -> str:
        return self.server.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.server.stop()


def start_host_database(kube: Kube, namespace: str, name: str, max_connections: int) -> HostDatabase:
    """initdb + postgres (the embedded wheel) on 127.0.0.1 and the bridge address, the roles, pgbench's
    tables, and scram for the pod range: the server a user runs outside Kubernetes."""
    server = LocalPostgres(max_connections=max_connections, host=f"127.0.0.1,{GATEWAY}").start()
    try:
        db = UserDatabase(name, namespace, GATEWAY, server.port)
        host = HostDatabase(server, db)
        with contextlib.closing(psycopg2.connect(**server.connect_kwargs())) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD %s", (db.passwords.app,))
                cur.execute(f"CREATE ROLE {TENANT_ROLE} LOGIN PASSWORD %s", (db.passwords.tenant,))
                cur.execute(
                    f"CREATE ROLE {MONITOR_ROLE} LOGIN PASSWORD %s CONNECTION LIMIT {MONITOR_CONNECTION_LIMIT}"
                    " IN ROLE pg_monitor",
                    (db.passwords.monitor,),
                )
                cur.execute(f"CREATE DATABASE {APP_DB} OWNER {APP_ROLE}")
                # Pods come from the pod range, never trusted: the passwords in the Secrets are checked.
                cur.execute("SELECT setting FROM pg_settings WHERE name = 'hba_file'")
                (hba_file,) = cur.fetchone()
        with open(hba_file, "a") as hba:
            hba.write(f"host all all {POD_CIDR} scram-sha-256\n")
        host.sql("SELECT pg_reload_conf()")
        assert server.bin_dir is not None
        subprocess.run(
            [
                str(server.bin_dir / "pgbench"),
                "--initialize",
                "--scale=1",
                "--quiet",
                "--host=127.0.0.1",
                f"--port={server.port}",
                f"--username={APP_ROLE}",
                APP_DB,
            ],
            env={"PGPASSWORD": db.passwords.app, "PATH": "/usr/bin:/bin"},
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        create_secrets(kube, db)
        return host
    except BaseException:
        server.stop()
        raise


@contextlib.contextmanager
def host_tenant(
    host: HostDatabase, count: int = TENANT_CONNECTIONS, role: str = TENANT_ROLE, application: str = TENANT_APPLICATION
) -> Iterator[list[Any]]:
    """Idle sessions from this machine (not a pod) under ``role``: another tenant of the outside server,
    or, as the app's role, a client of the app the server sees from an address that is no pod's."""
    password = host.db.passwords.tenant if role == TENANT_ROLE else host.db.passwords.app
    conns: list[Any] = []
    try:
        for _ in range(count):
            conns.append(
                psycopg2.connect(
                    host="127.0.0.1",
                    port=host.server.port,
                    user=role,
                    password=password,
                    dbname=APP_DB,
                    application_name=application,
                )
            )
        yield conns
    finally:
        for conn in conns:
            conn.close()


# -- the user's app ----------------------------------------------------------------------------------
def app_deployment(name: str, db: UserDatabase, replicas: int) -> dict[str, Any]:
    """The user's app: ``pgbench`` with CLIENTS_PER_POD clients, each on one connection for the pod's
    life (no ``-C``), read-only and rate-limited so that it costs the node little. Annotated so that
    poolbench may scale it."""
    labels = {APP_LABEL: name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels, "annotations": {ALLOW_SCALING_ANNOTATION: "true"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": POSTGRES_UID,
                        "runAsGroup": POSTGRES_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 2,
                    "containers": [
                        {
                            "name": "pgbench",
                            "image": POSTGRES_IMAGE,
                            "imagePullPolicy": "Never",
                            "command": ["pgbench"],
                            "args": [
                                f"--host={db.host}",
                                f"--port={db.port}",
                                f"--username={APP_ROLE}",
                                f"--client={CLIENTS_PER_POD}",
                                "--jobs=1",
                                "--time=86400",
                                "--rate=20",
                                "--select-only",
                                "--no-vacuum",
                                APP_DB,
                            ],
                            "env": [
                                {
                                    "name": "PGPASSWORD",
                                    "valueFrom": {"secretKeyRef": {"name": db.app_secret, "key": "password"}},
                                },
                                {"name": "PGAPPNAME", "value": name},
                                {"name": "PGCONNECT_TIMEOUT", "value": "5"},
                            ],
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                            "securityContext": restricted_container(),
                        }
                    ],
                },
            },
        },
    }


def create_app(kube: Kube, cluster: Cluster, db: UserDatabase, name: str, replicas: int) -> dict[str, Any]:
    """The app's Deployment, returned once every replica has its CLIENTS_PER_POD sessions open."""
    kubectl(cluster, "-n", db.namespace, "apply", "-f", "-", input=yaml.safe_dump(app_deployment(name, db, replicas)))
    wait_for(lambda: app_settled(kube, db.namespace, name, replicas), 180, interval=0.5, what=f"{name} at {replicas}")
    return deployment(kube, db.namespace, name)


def deployment(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
    return found


def app_pods(kube: Kube, namespace: str, name: str) -> dict[str, str]:
    """The app's live pods: name -> pod IP (pods being deleted or without an IP left out)."""
    pods = kube.items(f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"{APP_LABEL}={name}")
    return {
        p["metadata"]["name"]: p["status"]["podIP"]
        for p in pods
        if not p["metadata"].get("deletionTimestamp") and p["status"].get("podIP")
    }


def app_settled(kube: Kube, namespace: str, name: str, replicas: int) -> bool:
    """The Deployment has exactly ``replicas`` pods, every one Ready and none restarted or going."""
    pods = [
        p
        for p in kube.items(f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"{APP_LABEL}={name}")
        if p["status"].get("phase") not in ("Succeeded", "Failed")
    ]
    return len(pods) == replicas and all(
        not p["metadata"].get("deletionTimestamp") and pod_is_ready(p) and restarts(p) == 0 for p in pods
    )


def pod_is_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions", []))


def restarts(pod: dict[str, Any]) -> int:
    return sum(c.get("restartCount", 0) for c in (pod.get("status") or {}).get("containerStatuses") or [])


def app_restarts(kube: Kube, namespace: str, name: str) -> dict[str, int]:
    """Every app pod still listed (terminated ones too) -> its containers' restarts."""
    pods = kube.items(f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"{APP_LABEL}={name}")
    return {p["metadata"]["name"]: restarts(p) for p in pods}


def delete_app(kube: Kube, namespace: str, name: str) -> None:
    """The Deployment and its pods gone from the API (terminating ones too): their containers have
    ended, so their sessions are closed and the next test's server sees no tenant it did not make."""
    kube.delete(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}", query={"propagationPolicy": "Foreground"})

    def gone() -> bool:
        return not kube.items(f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"{APP_LABEL}={name}")

    wait_for(gone, 120, interval=0.5, what=f"{name}'s pods gone")


# -- another tenant ----------------------------------------------------------------------------------
TENANT_SCRIPT = f"""
import os, time
import psycopg2
conns = [
    psycopg2.connect(host=os.environ["DB_HOST"], port=int(os.environ["DB_PORT"]), dbname="{APP_DB}",
                     user="{TENANT_ROLE}", password=os.environ["DB_PASSWORD"], application_name="{TENANT_APPLICATION}")
    for _ in range({TENANT_CONNECTIONS})
]
print("holding", len(conns), "idle sessions", flush=True)
while True:
    time.sleep(3600)
"""


def create_tenant_pod(kube: Kube, db: UserDatabase, name: str = "tenant") -> str:
    """Another tenant of the same server: one pod holding TENANT_CONNECTIONS idle sessions under its
    own role (``tenant``) for its whole life. Returns the pod's IP once it holds them."""
    kube.create(
        f"/api/v1/namespaces/{db.namespace}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {APP_LABEL: name}},
            "spec": {
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": WORKLOAD_UID,
                    "runAsGroup": WORKLOAD_UID,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "tenant",
                        "image": WORKLOAD_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["python3", "-c", TENANT_SCRIPT],
                        "env": [
                            {"name": "DB_HOST", "value": db.host},
                            {"name": "DB_PORT", "value": str(db.port)},
                            {
                                "name": "DB_PASSWORD",
                                "valueFrom": {"secretKeyRef": {"name": db.app_secret, "key": "tenant-password"}},
                            },
                        ],
                        "securityContext": restricted_container(),
                    }
                ],
            },
        },
    )

    def holding() -> str | None:
        pod = kube.get(f"/api/v1/namespaces/{db.namespace}/pods/{name}")
        log = kube.get(f"/api/v1/namespaces/{db.namespace}/pods/{name}/log", raw=True).decode(errors="replace")
        return pod["status"].get("podIP") if "holding" in log else None

    ip: str = wait_for(holding, 120, interval=0.5, what=f"the tenant pod {name} holding its sessions")
    return ip
