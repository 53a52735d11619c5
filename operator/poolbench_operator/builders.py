"""Pure builders of a benchmark's child objects (dask-kubernetes style ``build_*``: dicts, no I/O).

Children: a Secret (generated passwords), the Postgres Service and StatefulSet (the spec's limits
and the connection-logging settings as server arguments), and the workload Deployment (starts at 0
replicas; the driver scales it).
With ``spec.variants`` there is one workload Deployment per variant (``<bench>--<variant>-workload``,
labelled ``poolbench.dev/variant``), and per pooled variant a PgBouncer: a Secret with its
``pgbouncer.ini`` and auth file, a Deployment (``pooler.replicas`` pods) and a Service on 6432 that
the variant's workload connects to. Every pod runs as non-root with no privilege escalation, all
capabilities dropped, and resource requests and limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from poolbench.core.budget import surge_pods
from poolbench.core.contracts.replica_env import APP_NAME_ENV, METRICS_PORT_ENV, SUMMARY_PATH_ENV
from poolbench.core.pooler import ADMIN_USER, CONFIG_DIR, LISTEN_PORT, pgbouncer_ini, userlist
from poolbench.core.serverlog import SERVER_LOG_SETTINGS
from poolbench.core.spec import LoadJobSpec, PoolBenchmarkSpec, PoolerSpec, VariantSpec
from poolbench.core.workload_env import DATABASE, SUPERUSER, role_name, workload_env

POSTGRES_PORT = 5432
POSTGRES_CONTAINER = "postgres"  # the container whose log the operator follows
METRICS_PORT = 9187
TERMINATION_PATH = "/dev/termination-log"
WORKLOAD_UID = 10001
SECRET_SUPERUSER_KEY = "postgres-password"
SECRET_APP_KEY = "app-password"
VARIANT_LABEL = "poolbench.dev/variant"
PGBOUNCER_INI = "pgbouncer.ini"
PGBOUNCER_USERLIST = "userlist.txt"


@dataclass(frozen=True)
class Names:
    """Child object names. ``variant``: the per-variant objects of a benchmark with ``spec.variants``
    (``<bench>--<variant>-workload``, ``<bench>-<variant>-pgbouncer``); the shared ones (Secret,
    Postgres) are the same for every variant. Without variants, the names are as they always were."""

    benchmark: str
    variant: str | None = None

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
        return f"{self.benchmark}--{self.variant}-workload" if self.variant else f"{self.benchmark}-workload"

    @property
    def pooler(self) -> str:
        """The variant's PgBouncer: its Secret, Deployment and Service share this name."""
        if not self.variant:
            raise ValueError("only a variant has a pooler")
        return f"{self.benchmark}--{self.variant}-pgbouncer"

    def for_variant(self, variant: str | None) -> Names:
        return Names(self.benchmark, variant)


def labels(benchmark: str, component: str, variant: str | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "poolbench",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/instance": benchmark,
        "app.kubernetes.io/managed-by": "poolbench-operator",
        "poolbench.dev/benchmark": benchmark,
    }
    if variant:
        out[VARIANT_LABEL] = variant
    return out


def selector(benchmark: str, component: str, variant: str | None = None) -> dict[str, str]:
    out = {"poolbench.dev/benchmark": benchmark, "app.kubernetes.io/component": component}
    if variant:
        out[VARIANT_LABEL] = variant
    return out


def variant_names(spec: PoolBenchmarkSpec) -> list[str | None]:
    """The ``Names.variant`` of each variant's objects: ``[None]`` without ``spec.variants``."""
    return [v.name for v in spec.variants] if spec.variants else [None]


def container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def build_secret(benchmark: str, superuser_password: str, app_password: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": Names(benchmark).secret, "labels": labels(benchmark, "credentials")},
        "type": "Opaque",
        "stringData": {SECRET_SUPERUSER_KEY: superuser_password, SECRET_APP_KEY: app_password},
    }


def postgres_args(spec: PoolBenchmarkSpec) -> list[str]:
    """The server's limits. A provider's reserve is all held back from superusers here (any image version
    has superuser_reserved_connections; reserved_connections needs 16+): a normal role loses exactly what
    the provider takes from it, while role superuser stays a real superuser in the cluster."""
    pg = spec.postgres
    args = [
        "-c",
        f"max_connections={pg.max_connections}",
        "-c",
        f"superuser_reserved_connections={pg.reserved_for('app')}",
    ]
    for key, value in sorted(pg.settings.items()):
        args += ["-c", f"{key}={value}"]
    return args


def server_log_args() -> list[str]:
    """The settings that make the server log every client backend's start, refusal and end in the form
    the monitor parses (``core.serverlog``); the operator follows them in the pod's log. One list
    element per value, so the prefix's spaces reach the server unsplit."""
    args: list[str] = []
    for key, value in SERVER_LOG_SETTINGS.items():
        args += ["-c", f"{key}={value}"]
    return args


def build_postgres_service(benchmark: str) -> dict[str, Any]:
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


def build_postgres_statefulset(benchmark: str, spec: PoolBenchmarkSpec) -> dict[str, Any]:
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
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": spec.postgres.run_as_user,
                        "runAsGroup": spec.postgres.run_as_user,
                        "fsGroup": spec.postgres.run_as_user,
                    },
                    "automountServiceAccountToken": False,
                    "containers": [
                        {
                            "name": POSTGRES_CONTAINER,
                            "image": spec.postgres.image,
                            "args": [*postgres_args(spec), *server_log_args()],
                            "ports": [{"name": "postgres", "containerPort": POSTGRES_PORT}],
                            "env": [
                                {"name": "POSTGRES_USER", "value": SUPERUSER},
                                {"name": "POSTGRES_DB", "value": "postgres"},
                                {"name": "POSTGRES_PASSWORD", "valueFrom": secret_ref},
                                {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                            ],
                            # A TCP check, not pg_isready: pg_isready logs in (a client backend every period)
                            # and the monitor would count that session in the step's peak. A connect without a
                            # startup packet never becomes a session and PostgreSQL does not log it. Every
                            # second: the benchmark starts when the server is ready, and the check costs nothing.
                            "readinessProbe": {
                                "tcpSocket": {"port": POSTGRES_PORT},
                                "periodSeconds": 1,
                                "failureThreshold": 3,
                            },
                            "resources": {
                                "requests": {"cpu": "250m", "memory": "256Mi"},
                                "limits": {"cpu": "2", "memory": "1Gi"},
                            },
                            "securityContext": container_security(),
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                                {"name": "run", "mountPath": "/var/run/postgresql"},
                            ],
                        }
                    ],
                    "volumes": [{"name": "data", "emptyDir": {}}, {"name": "run", "emptyDir": {}}],
                },
            },
        },
    }


#: The workload pod template's annotation a measured rolling update changes (a new template: a rollout).
ROLLOUT_ANNOTATION = "poolbench.dev/rollout"


def rollout_strategy(spec: PoolBenchmarkSpec) -> dict[str, Any]:
    """With ``rollout.measure``: the Deployment's own RollingUpdate with the app's maxSurge and
    maxUnavailable 0 (old pods serve until the new ones are available), held at its first surge for
    the step: a new pod becomes available only after minReadySeconds, longer than a step may last, so
    the controller starts the surge pods beside every old one and replaces none while it is measured.
    A maxSurge of 0 cannot roll without maxUnavailable 1 (the API refuses both 0): then one old pod goes."""
    rollout = spec.rollout
    if rollout is None or not rollout.measure:
        return {}
    hold = spec.step_timeout_seconds + 60
    no_surge = surge_pods(1, rollout.max_surge) == 0
    return {
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": rollout.max_surge, "maxUnavailable": 1 if no_surge else 0},
        },
        "minReadySeconds": hold,
        "progressDeadlineSeconds": hold + 600,  # the API requires it above minReadySeconds
    }


def build_workload_deployment(
    benchmark: str, spec: PoolBenchmarkSpec, image: str, variant: VariantSpec | None = None
) -> dict[str, Any]:
    """The replicas. After the hold each pod stays up (done), so a Deployment never restarts a finished one.
    ``variant``: one of ``spec.variants`` (its engine; its pooler's Service as PGHOST when pooled)."""
    names = Names(benchmark, variant.name if variant else None)
    seen_by = spec.for_variant(variant) if variant is not None else spec
    pooler = variant.pooler if variant is not None else None
    password_key = SECRET_APP_KEY if spec.workload.role == "app" else SECRET_SUPERUSER_KEY
    env: list[dict[str, Any]] = [
        {"name": k, "value": v} for k, v in sorted(workload_env(seen_by, exit_after_hold=False, pooler=pooler).items())
    ]
    host, port = (names.pooler, LISTEN_PORT) if pooler is not None else (names.postgres, POSTGRES_PORT)
    env += [
        {"name": "PGHOST", "value": host},
        {"name": "PGPORT", "value": str(port)},
        {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": names.secret, "key": password_key}}},
        {"name": APP_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": METRICS_PORT_ENV, "value": str(METRICS_PORT)},
        {"name": SUMMARY_PATH_ENV, "value": TERMINATION_PATH},
    ]
    pod_labels = labels(benchmark, "workload", names.variant)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": names.workload, "labels": pod_labels},
        "spec": {
            "replicas": 0,
            **rollout_strategy(spec),
            "selector": {"matchLabels": selector(benchmark, "workload", names.variant)},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": WORKLOAD_UID, "runAsGroup": WORKLOAD_UID},
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "workload",
                            "image": image,
                            "command": ["python", "-m", "workload"],
                            "env": env,
                            "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
                            "terminationMessagePath": TERMINATION_PATH,
                            "terminationMessagePolicy": "File",
                            # Each worker process (workload.processes) is an interpreter with its own pool.
                            "resources": {
                                "requests": {"cpu": "50m", "memory": "64Mi"},
                                "limits": {"cpu": "500m", "memory": f"{128 + 128 * spec.workload.processes}Mi"},
                            },
                            "securityContext": container_security(),
                        }
                    ],
                },
            },
        },
    }


def build_pooler_secret(
    benchmark: str,
    spec: PoolBenchmarkSpec,
    variant: str,
    pooler: PoolerSpec,
    *,
    workload_password: str,
    admin_password: str,
) -> dict[str, Any]:
    """The variant's ``pgbouncer.ini`` and auth file: the workload's role (its own password: PgBouncer
    logs in to the server with it) and the admin-console user the operator samples with."""
    names = Names(benchmark, variant)
    ini = pgbouncer_ini(
        pooler,
        server_host=names.postgres,
        server_port=POSTGRES_PORT,
        database=DATABASE,
        listen_addr="*",
        listen_port=LISTEN_PORT,
        auth_file=f"{CONFIG_DIR}/{PGBOUNCER_USERLIST}",
    )
    users = {role_name(spec.workload): workload_password, ADMIN_USER: admin_password}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": names.pooler, "labels": labels(benchmark, "pgbouncer", variant)},
        "type": "Opaque",
        "stringData": {PGBOUNCER_INI: ini, PGBOUNCER_USERLIST: userlist(users)},
    }


def build_pooler_service(benchmark: str, variant: str) -> dict[str, Any]:
    names = Names(benchmark, variant)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": names.pooler, "labels": labels(benchmark, "pgbouncer", variant)},
        "spec": {
            "selector": selector(benchmark, "pgbouncer", variant),
            "ports": [{"name": "pgbouncer", "port": LISTEN_PORT, "targetPort": "pgbouncer"}],
        },
    }


def build_pooler_deployment(benchmark: str, variant: str, pooler: PoolerSpec) -> dict[str, Any]:
    """``pooler.replicas`` PgBouncer pods reading their configuration from the Secret (read-only).

    The pod runs as ``pooler.run_as_user`` (the image's pgbouncer user: PgBouncer refuses root) and
    leaves runAsGroup unset, so the runtime gives it that user's primary group from the image
    (996 in CloudNativePG's image), which owns the image's own directories; fsGroup makes the
    Secret's files (0440) readable by the pod's group whatever the image's groups are."""
    names = Names(benchmark, variant)
    pod_labels = labels(benchmark, "pgbouncer", variant)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": names.pooler, "labels": pod_labels},
        "spec": {
            "replicas": pooler.replicas,
            "selector": {"matchLabels": selector(benchmark, "pgbouncer", variant)},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": pooler.run_as_user,
                        "fsGroup": pooler.run_as_user,
                    },
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 10,
                    "containers": [
                        {
                            "name": "pgbouncer",
                            "image": pooler.image,
                            "command": ["pgbouncer", f"{CONFIG_DIR}/{PGBOUNCER_INI}"],
                            "ports": [{"name": "pgbouncer", "containerPort": LISTEN_PORT}],
                            "readinessProbe": {
                                "tcpSocket": {"port": LISTEN_PORT},
                                "periodSeconds": 2,
                                "failureThreshold": 3,
                            },
                            "resources": {
                                "requests": {"cpu": "50m", "memory": "32Mi"},
                                "limits": {"cpu": "1", "memory": "128Mi"},
                            },
                            "securityContext": container_security(),
                            "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
                        }
                    ],
                    "volumes": [{"name": "config", "secret": {"secretName": names.pooler, "defaultMode": 0o440}}],
                },
            },
        },
    }


def build_children(
    benchmark: str,
    spec: PoolBenchmarkSpec,
    *,
    workload_image: str,
    superuser_password: str,
    app_password: str,
    pooler_admin_password: str | None = None,
) -> list[dict[str, Any]]:
    """Everything one benchmark owns, in creation order (each pooler before the workload that uses it)."""
    children = [
        build_secret(benchmark, superuser_password, app_password),
        build_postgres_service(benchmark),
        build_postgres_statefulset(benchmark, spec),
    ]
    if not spec.variants:
        return [*children, build_workload_deployment(benchmark, spec, workload_image)]
    workload_password = app_password if spec.workload.role == "app" else superuser_password
    for variant in spec.variants:
        if variant.pooler is not None:
            if not pooler_admin_password:
                raise ValueError("a pooled variant needs pooler_admin_password")
            children += [
                build_pooler_secret(
                    benchmark,
                    spec,
                    variant.name,
                    variant.pooler,
                    workload_password=workload_password,
                    admin_password=pooler_admin_password,
                ),
                build_pooler_service(benchmark, variant.name),
                build_pooler_deployment(benchmark, variant.name, variant.pooler),
            ]
        children.append(build_workload_deployment(benchmark, spec, workload_image, variant))
    return children


def child_refs(benchmark: str, spec: PoolBenchmarkSpec) -> list[tuple[str, str]]:
    """(kind, name) of every child, in deletion order (the reverse of creation); no passwords needed."""
    refs = [
        ("Secret", Names(benchmark).secret),
        ("Service", Names(benchmark).postgres),
        ("StatefulSet", Names(benchmark).postgres),
    ]
    pooled = {v.name for v in spec.variants or [] if v.pooler is not None}
    for variant in variant_names(spec):
        names = Names(benchmark, variant)
        if variant in pooled:
            refs += [("Secret", names.pooler), ("Service", names.pooler), ("Deployment", names.pooler)]
        refs.append(("Deployment", names.workload))
    return refs[::-1]


# -- the user's own app (spec.target) --------------------------------------------------------------


def label_selector(selector: dict[str, Any]) -> str:
    """A Deployment's ``spec.selector`` (matchLabels and matchExpressions, as the API returns it) as the
    label-selector text a pod list takes."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or selector.get("match_labels") or {}).items())]
    for expr in selector.get("matchExpressions") or selector.get("match_expressions") or []:
        key, operator, values = expr["key"], expr["operator"], expr.get("values") or []
        if operator == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif operator == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif operator == "Exists":
            parts.append(key)
        elif operator == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def load_job_name(benchmark: str, step: int) -> str:
    return f"{benchmark}-load-{step}"


def build_load_job(benchmark: str, step: int, load: LoadJobSpec, hold_seconds: int) -> dict[str, Any]:
    """The user's load generator for one step's hold: one pod, never retried, deleted after the hold (and
    ended by the API server if that is missed: activeDeadlineSeconds)."""
    container: dict[str, Any] = {"name": "load", "image": load.image}
    if load.command:
        container["command"] = list(load.command)
    if load.args:
        container["args"] = list(load.args)
    job_labels = labels(benchmark, "load")
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": load_job_name(benchmark, step), "labels": job_labels},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": hold_seconds + 300,
            "template": {
                "metadata": {"labels": job_labels},
                "spec": {"restartPolicy": "Never", "containers": [container]},
            },
        },
    }
