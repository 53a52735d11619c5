"""Pure builders of a benchmark's child objects (dask-kubernetes style ``build_*``: dicts, no I/O).

The operator creates exactly what ``build_children`` returns, and ``poolbench render`` prints the same
list (with placeholders for the generated passwords), so what a cluster gets can be read, scanned and
reviewed before it is applied.

Children: a Secret (generated passwords), the Postgres Service and StatefulSet (the spec's limits
and the connection-logging settings as server arguments), a NetworkPolicy that admits only the
benchmark's own clients to PostgreSQL, one that opens the workload pods' metrics port and nothing else,
and the workload Deployment (starts at 0 replicas; the driver scales it).
With ``spec.variants`` there is one workload Deployment per variant (``<bench>--<variant>-workload``,
labelled ``poolbench.dev/variant``), and per pooled variant a PgBouncer: a Secret with its
``pgbouncer.ini`` and auth file, a Deployment (``pooler.replicas`` pods) and a Service on 6432 that
the variant's workload connects to, all behind one more NetworkPolicy. Every pod runs as non-root
with a read-only root file system (its writable paths are emptyDir volumes), no privilege
escalation, all capabilities dropped, and resource requests and limits.

Each child carries ``poolbench.dev/spec-hash``: the SHA-256 of its own canonical JSON as built with
placeholder passwords (so the hash says which inputs and images built it, never a password). An
existing child with another hash was built by another operator version or configuration.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from .budget import surge_pods
from .contracts.replica_env import APP_NAME_ENV, METRICS_PORT_ENV, SUMMARY_PATH_ENV
from .pooler import ADMIN_USER, CONFIG_DIR, LISTEN_PORT, pgbouncer_ini, userlist
from .results import RESULTS_KEY
from .serverlog import SERVER_LOG_SETTINGS
from .spec import LoadJobSpec, PoolBenchmark, PoolBenchmarkSpec, PoolerSpec, VariantSpec
from .workload_env import DATABASE, SUPERUSER, role_name, workload_env

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
#: What a child was built from (its canonical JSON's SHA-256, placeholder passwords); see ``spec_hash``.
SPEC_HASH_ANNOTATION = "poolbench.dev/spec-hash"
#: On the PgBouncer pod template: the spec hash of the configuration Secret it mounts, so a changed
#: ``pgbouncer.ini`` changes the Deployment's own hash and rolls its pods.
CONFIG_HASH_ANNOTATION = "poolbench.dev/config-hash"
#: What ``poolbench render`` shows (and the spec hash is computed with) instead of a generated password.
PASSWORD_PLACEHOLDER = "<generated-by-the-operator>"
#: The workload image the operator uses unless POOLBENCH_WORKLOAD_IMAGE says otherwise.
DEFAULT_WORKLOAD_IMAGE = "poolbench-workload:dev"
#: The operator's namespace unless it runs in a pod or POOLBENCH_NAMESPACE says otherwise.
DEFAULT_OPERATOR_NAMESPACE = "poolbench-system"
#: The labels of the operator's own pods (manifests/operator.yaml, charts/poolbench): the NetworkPolicies
#: admit them, from the operator's namespace, to PostgreSQL and PgBouncer (the monitor, the admin console).
OPERATOR_POD_LABELS = {"app.kubernetes.io/name": "poolbench-operator"}
#: A writable /tmp for read-only roots (the image's entrypoint and Python's tempfile write there).
TMP_VOLUME = {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}
TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}


@dataclass(frozen=True)
class Credentials:
    """The generated passwords a benchmark's Secrets hold (the operator derives them from its key)."""

    superuser: str
    app: str
    pooler_admin: str


PLACEHOLDER_CREDENTIALS = Credentials(PASSWORD_PLACEHOLDER, PASSWORD_PLACEHOLDER, PASSWORD_PLACEHOLDER)


def spec_hash(obj: dict[str, Any]) -> str:
    """``sha256:`` and the hex digest of ``obj``'s canonical JSON (sorted keys, no spaces), without its
    own spec-hash annotation."""
    meta = obj.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != SPEC_HASH_ANNOTATION}
    unstamped = {**obj, "metadata": {**{k: v for k, v in meta.items() if k != "annotations"}}}
    if annotations:
        unstamped["metadata"]["annotations"] = annotations
    canonical = json.dumps(unstamped, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def stamp(obj: dict[str, Any], digest: str) -> dict[str, Any]:
    """``obj`` with its spec-hash annotation set to ``digest`` (changed in place, and returned)."""
    obj["metadata"].setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = digest
    return obj


def stamped_hash(obj: Any) -> str | None:
    """The spec hash an existing object carries (a dict or an API client model), None without one."""
    meta = _field(obj, "metadata", "metadata") or {}
    value = (_field(meta, "annotations", "annotations") or {}).get(SPEC_HASH_ANNOTATION)
    return str(value) if value is not None else None


ChildAction = Literal["keep", "replace", "foreign"]


def _field(obj: Any, json_name: str, attr: str) -> Any:
    """A field of an API object as a dict (camelCase) or as the client's model (snake_case)."""
    return obj.get(json_name) if isinstance(obj, dict) else getattr(obj, attr, None)


def owner_uids(obj: Any) -> list[str]:
    """The uids in an object's ownerReferences (a dict or an API client model)."""
    meta = _field(obj, "metadata", "metadata") or {}
    refs = _field(meta, "ownerReferences", "owner_references") or []
    return [str(_field(ref, "uid", "uid")) for ref in refs]


def child_action(wanted: dict[str, Any], existing: Any, owner_uid: str) -> ChildAction:
    """What to do with an object that already has a child's kind and name: ``keep`` it (this benchmark's,
    built from the same inputs), ``replace`` it (this benchmark's, built from others: another operator
    version, workload image or spec), or leave it alone and say so, ``foreign`` (not owned by this
    benchmark: someone else's, never changed)."""
    if owner_uid not in owner_uids(existing):
        return "foreign"
    return "keep" if stamped_hash(existing) == stamped_hash(wanted) else "replace"


def mounted_secrets(obj: dict[str, Any]) -> list[str]:
    """The Secrets a workload object's pod template mounts as volumes (none for other kinds)."""
    template = (obj.get("spec") or {}).get("template") or {}
    volumes = (template.get("spec") or {}).get("volumes") or []
    return [v["secret"]["secretName"] for v in volumes if "secret" in v]


def image_digest(image_id: str) -> str:
    """A container status's ``imageID`` as the digest alone (``sha256:…``), whatever the runtime puts
    before it (``docker-pullable://name@``, ``name@``); an ID without a digest as it is."""
    at = image_id.rfind("sha256:")
    return image_id[at:] if at >= 0 else image_id


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
    def results(self) -> str:
        """The ConfigMap holding the whole status (``status.resultsConfigMap``)."""
        return f"{self.benchmark}-results"

    @property
    def postgres_pod(self) -> str:
        return f"{self.postgres}-0"

    @property
    def workload(self) -> str:
        return f"{self.benchmark}--{self.variant}-workload" if self.variant else f"{self.benchmark}-workload"

    @property
    def workloads_policy(self) -> str:
        """The NetworkPolicy in front of every workload pod of the benchmark (all its variants)."""
        return f"{self.benchmark}-workload"

    @property
    def poolers_policy(self) -> str:
        """The NetworkPolicy in front of every PgBouncer of the benchmark (all its pooled variants)."""
        return f"{self.benchmark}-pgbouncer"

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
    """Every container of ours: nothing but its volumes is writable."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def tcp_readiness(port: int, *, period_seconds: int) -> dict[str, Any]:
    """Ready once the port accepts a connection (no login: nothing a server would count as a session)."""
    return {"tcpSocket": {"port": port}, "periodSeconds": period_seconds, "failureThreshold": 3}


def resources(requests: tuple[str, str], limits: tuple[str, str]) -> dict[str, Any]:
    """Requests and limits, each (cpu, memory)."""
    return {
        "requests": {"cpu": requests[0], "memory": requests[1]},
        "limits": {"cpu": limits[0], "memory": limits[1]},
    }


def build_secret(benchmark: str, credentials: Credentials) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": Names(benchmark).secret, "labels": labels(benchmark, "credentials")},
        "type": "Opaque",
        "stringData": {SECRET_SUPERUSER_KEY: credentials.superuser, SECRET_APP_KEY: credentials.app},
    }


def build_network_policy(
    benchmark: str, name: str, component: str, port: int, clients: tuple[str, ...], operator_namespace: str
) -> dict[str, Any]:
    """Ingress to the benchmark's ``component`` pods on ``port`` only from its own ``clients`` pods
    (same namespace, by the benchmark and component labels) and from the operator's pods (by their
    labels, in the operator's namespace). Enforced only by a network plugin that implements
    NetworkPolicy (docs/security.md)."""
    peers: list[dict[str, Any]] = [{"podSelector": {"matchLabels": selector(benchmark, c)}} for c in clients]
    peers.append(
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": operator_namespace}},
            "podSelector": {"matchLabels": dict(OPERATOR_POD_LABELS)},
        }
    )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "labels": labels(benchmark, component)},
        "spec": {
            "podSelector": {"matchLabels": selector(benchmark, component)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": port}]}],
        },
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
                            "readinessProbe": tcp_readiness(POSTGRES_PORT, period_seconds=1),
                            "resources": resources(("250m", "256Mi"), ("2", "1Gi")),
                            "securityContext": container_security(),
                            # The server writes only its data directory, its socket and lock files, and
                            # the entrypoint's temporary files.
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                                {"name": "run", "mountPath": "/var/run/postgresql"},
                                TMP_MOUNT,
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "data", "emptyDir": {}},
                        {"name": "run", "emptyDir": {"sizeLimit": "16Mi"}},
                        TMP_VOLUME,
                    ],
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
                            "resources": resources(
                                ("50m", "64Mi"), ("500m", f"{128 + 128 * spec.workload.processes}Mi")
                            ),
                            "securityContext": container_security(),
                            "volumeMounts": [TMP_MOUNT],
                        }
                    ],
                    "volumes": [TMP_VOLUME],
                },
            },
        },
    }


def workload_password(spec: PoolBenchmarkSpec, credentials: Credentials) -> str:
    """The workload role's password: the app role's, or the superuser's (``workload.role``)."""
    return credentials.app if spec.workload.role == "app" else credentials.superuser


def build_pooler_secret(
    benchmark: str, spec: PoolBenchmarkSpec, variant: str, pooler: PoolerSpec, credentials: Credentials
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
    users = {role_name(spec.workload): workload_password(spec, credentials), ADMIN_USER: credentials.pooler_admin}
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


def build_pooler_deployment(
    benchmark: str, spec: PoolBenchmarkSpec, variant: str, pooler: PoolerSpec
) -> dict[str, Any]:
    """``pooler.replicas`` PgBouncer pods reading their configuration from the Secret (read-only); the
    pod template carries that Secret's spec hash (``CONFIG_HASH_ANNOTATION``).

    The pod runs as ``pooler.run_as_user`` (the image's pgbouncer user: PgBouncer refuses root) and
    leaves runAsGroup unset, so the runtime gives it that user's primary group from the image
    (996 in CloudNativePG's image), which owns the image's own directories; fsGroup makes the
    Secret's files (0440) readable by the pod's group whatever the image's groups are."""
    names = Names(benchmark, variant)
    pod_labels = labels(benchmark, "pgbouncer", variant)
    config_hash = spec_hash(build_pooler_secret(benchmark, spec, variant, pooler, PLACEHOLDER_CREDENTIALS))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": names.pooler, "labels": pod_labels},
        "spec": {
            "replicas": pooler.replicas,
            "selector": {"matchLabels": selector(benchmark, "pgbouncer", variant)},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {CONFIG_HASH_ANNOTATION: config_hash}},
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
                            "readinessProbe": tcp_readiness(LISTEN_PORT, period_seconds=2),
                            "resources": resources(("50m", "32Mi"), ("1", "128Mi")),
                            "securityContext": container_security(),
                            "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}, TMP_MOUNT],
                        }
                    ],
                    "volumes": [
                        {"name": "config", "secret": {"secretName": names.pooler, "defaultMode": 0o440}},
                        TMP_VOLUME,
                    ],
                },
            },
        },
    }


def build_metrics_only_policy(benchmark: str) -> dict[str, Any]:
    """The workload pods accept connections on their metrics port only, from anywhere: the operator reads
    it through the API server's pod proxy, which comes from the control plane's address, not a pod."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": Names(benchmark).workloads_policy, "labels": labels(benchmark, "workload")},
        "spec": {
            "podSelector": {"matchLabels": selector(benchmark, "workload")},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": METRICS_PORT}]}],
        },
    }


def _unstamped_children(
    benchmark: str, spec: PoolBenchmarkSpec, workload_image: str, operator_namespace: str, credentials: Credentials
) -> list[dict[str, Any]]:
    names = Names(benchmark)
    children = [
        build_secret(benchmark, credentials),
        build_postgres_service(benchmark),
        build_network_policy(
            benchmark, names.postgres, "postgres", POSTGRES_PORT, ("workload", "pgbouncer"), operator_namespace
        ),
        build_metrics_only_policy(benchmark),
        build_postgres_statefulset(benchmark, spec),
    ]
    if not spec.variants:
        return [*children, build_workload_deployment(benchmark, spec, workload_image)]
    if any(v.pooler is not None for v in spec.variants):
        children.append(
            build_network_policy(
                benchmark, names.poolers_policy, "pgbouncer", LISTEN_PORT, ("workload",), operator_namespace
            )
        )
    for variant in spec.variants:
        if variant.pooler is not None:
            children += [
                build_pooler_secret(benchmark, spec, variant.name, variant.pooler, credentials),
                build_pooler_service(benchmark, variant.name),
                build_pooler_deployment(benchmark, spec, variant.name, variant.pooler),
            ]
        children.append(build_workload_deployment(benchmark, spec, workload_image, variant))
    return children


def build_children(
    benchmark: str,
    spec: PoolBenchmarkSpec,
    *,
    workload_image: str,
    operator_namespace: str,
    credentials: Credentials = PLACEHOLDER_CREDENTIALS,
) -> list[dict[str, Any]]:
    """Everything one benchmark owns, in creation order (each pooler before the workload that uses it),
    each stamped with its spec hash. Without ``credentials`` the Secrets hold placeholders (what
    ``poolbench render`` prints); the hashes are the same either way."""
    shown = _unstamped_children(benchmark, spec, workload_image, operator_namespace, PLACEHOLDER_CREDENTIALS)
    digests = [spec_hash(obj) for obj in shown]
    real = shown
    if credentials != PLACEHOLDER_CREDENTIALS:
        real = _unstamped_children(benchmark, spec, workload_image, operator_namespace, credentials)
    return [stamp(obj, digest) for obj, digest in zip(real, digests, strict=True)]


def child_refs(benchmark: str, spec: PoolBenchmarkSpec) -> list[tuple[str, str]]:
    """(kind, name) of every child, in deletion order (the reverse of creation); no passwords needed."""
    built = build_children(benchmark, spec, workload_image="", operator_namespace="")
    return [(obj["kind"], obj["metadata"]["name"]) for obj in reversed(built)]


def render(
    bench: PoolBenchmark,
    *,
    workload_image: str = DEFAULT_WORKLOAD_IMAGE,
    operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE,
) -> list[dict[str, Any]]:
    """Every object the operator would create for ``bench``, passwords as placeholders: the built-in
    server's children, or for a benchmark of the user's own app (``spec.target``) its load Jobs (one a
    step; nothing else of the user's is created)."""
    spec = bench.spec
    if spec.target is None:
        return build_children(bench.name, spec, workload_image=workload_image, operator_namespace=operator_namespace)
    load = spec.target.load
    if load is None:
        return []
    steps = range(1, len(spec.step_counts()) + 1)
    return [build_load_job(bench.name, step, load, spec.target.hold_seconds) for step in steps]


def render_yaml(objects: list[dict[str, Any]], source: str) -> str:
    """``render``'s objects as one multi-document YAML stream, headed by what it is."""
    header = (
        f"# The objects the poolbench operator creates for {source} (poolbench render).\n"
        f"# Passwords are placeholders ({PASSWORD_PLACEHOLDER}): the operator generates them.\n"
    )
    if not objects:
        return header + "# (none: a benchmark of your own app without a load Job creates nothing)\n"
    return header + yaml.safe_dump_all(objects, sort_keys=False, width=120, explicit_start=True)


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
    job = {
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
    return stamp(job, spec_hash(job))


def build_results_config_map(benchmark: str, status_json: str) -> dict[str, Any]:
    """The ConfigMap holding the whole status (every step's detail) beside the resource's summary."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": Names(benchmark).results, "labels": labels(benchmark, "results")},
        "data": {RESULTS_KEY: status_json},
    }
