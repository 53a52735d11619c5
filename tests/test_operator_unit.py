"""Operator builders and pod-state logic (pure, no cluster)."""

import json
from typing import Any, cast

import pytest

from poolbench.clock import utc_now
from poolbench.core.children import (
    METRICS_PORT,
    ROLLOUT_ANNOTATION,
    TERMINATION_PATH,
    VARIANT_LABEL,
    Credentials,
    Names,
    build_children,
    child_refs,
    postgres_args,
    server_log_args,
)
from poolbench.core.pooler import ADMIN_USER, CONFIG_DIR
from poolbench.core.serverlog import SERVER_LOG_SETTINGS
from poolbench.core.spec import PoolBenchmarkSpec, parse_spec
from poolbench_operator.podstate import (
    Metrics,
    PodView,
    finished_replicas,
    may_still_run,
    parse_metrics,
    reports,
    step_done,
    work_done,
)

SPEC = parse_spec(
    {
        "steps": [2, 8],
        "postgres": {"maxConnections": 30, "settings": {"work_mem": "4MB"}},
        "workload": {"threads": 6, "role": "app", "engine": {"poolSize": 2, "maxOverflow": 3}},
    }
)


def built(name: str, spec: PoolBenchmarkSpec) -> list[dict[str, Any]]:
    """The children with known passwords (the operator's are derived from its key)."""
    creds = Credentials("S3CRET", "APPPW", "ADMINPW")
    return build_children(name, spec, workload_image="img:1", operator_namespace="ops", credentials=creds)


def children() -> dict[str, dict[str, Any]]:
    return {c["kind"]: c for c in built("demo", SPEC)}


def test_children_and_names() -> None:
    objs = children()
    assert set(objs) == {"Secret", "Service", "NetworkPolicy", "StatefulSet", "Deployment"}
    assert objs["StatefulSet"]["metadata"]["name"] == "demo-postgres" == Names("demo").postgres
    assert objs["Deployment"]["spec"]["replicas"] == 0
    assert objs["Secret"]["stringData"] == {"postgres-password": "S3CRET", "app-password": "APPPW"}


def test_a_providers_reserve_for_a_normal_role_becomes_the_servers_superuser_reserve() -> None:
    # RDS 8 GiB: 901, a normal role loses 3 + 2. Without reserved_connections (before PostgreSQL 16) the cluster
    # holds all 5 back from non-superusers, so role app is refused exactly where RDS would refuse it.
    rds = parse_spec({"steps": [1], "postgres": {"provider": {"name": "rds", "memoryGiB": 8}}})
    assert postgres_args(rds) == ["-c", "max_connections=901", "-c", "superuser_reserved_connections=5"]


def test_limits_become_server_arguments() -> None:
    assert postgres_args(SPEC) == [
        "-c",
        "max_connections=30",
        "-c",
        "superuser_reserved_connections=3",
        "-c",
        "work_mem=4MB",
    ]
    container = children()["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == postgres_args(SPEC) + server_log_args()
    # no login: a readiness session would be counted in every step's peak
    assert container["readinessProbe"] == {"tcpSocket": {"port": 5432}, "periodSeconds": 1, "failureThreshold": 3}


def test_the_server_logs_every_connection_in_the_parsed_form() -> None:
    """Each setting is one argument after its ``-c``: the prefix keeps its spaces (the container's args
    reach postgres as a list, through the image's entrypoint unsplit)."""
    assert server_log_args() == [
        "-c",
        "log_connections=on",
        "-c",
        "log_disconnections=on",
        "-c",
        "log_line_prefix=%n [%p] %b %e ",
        "-c",
        "lc_messages=C",
        "-c",
        "log_min_error_statement=panic",
    ]
    args = children()["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]["args"]
    settings = dict(a.split("=", 1) for a in args[1::2])
    assert args[0::2] == ["-c"] * len(settings)
    assert {k: settings[k] for k in SERVER_LOG_SETTINGS} == SERVER_LOG_SETTINGS
    assert settings["work_mem"] == "4MB"  # the user's own settings stay


def test_password_only_by_reference() -> None:
    objs = children()
    for kind in ("StatefulSet", "Deployment", "Service"):
        assert "S3CRET" not in json.dumps(objs[kind])
        assert "APPPW" not in json.dumps(objs[kind])
    env = {e["name"]: e for e in objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "app-password"  # role app
    assert env["PGUSER"]["value"] == "poolbench_app"
    assert env["PGHOST"]["value"] == "demo-postgres"
    assert env["POOLBENCH_SUMMARY_PATH"]["value"] == TERMINATION_PATH
    assert env["POOLBENCH_METRICS_PORT"]["value"] == str(METRICS_PORT)
    assert env["POOLBENCH_APP_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POOLBENCH_EXIT_AFTER_HOLD"]["value"] == "false"


def test_every_pod_is_locked_down() -> None:
    for kind in ("StatefulSet", "Deployment"):
        pod = children()[kind]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"]
            assert c["resources"]["limits"]


METRICS_TEXT = """# HELP poolbench_attempts_total Statements attempted, by outcome
# TYPE poolbench_attempts_total counter
poolbench_attempts_total{outcome="ok"} 42.0
poolbench_attempts_total{outcome="tooManyClients"} 2.0
# HELP poolbench_phase Replica phase
# TYPE poolbench_phase gauge
poolbench_phase{poolbench_phase="running"} 0.0
poolbench_phase{poolbench_phase="holding"} 1.0
"""


def test_parse_metrics() -> None:
    m = parse_metrics(METRICS_TEXT)
    assert m.phase == "holding"
    assert m.outcomes == {"ok": 42, "tooManyClients": 2}


def workload_pod(deleting: bool, *states: str, restarts: int = 0) -> Any:
    """A workload pod as the API returns it: marked for deletion or not, one container per state."""
    from datetime import UTC, datetime

    from kubernetes import client

    def state(kind: str) -> Any:
        if kind == "running":
            return client.V1ContainerState(running=client.V1ContainerStateRunning())
        if kind == "terminated":
            return client.V1ContainerState(terminated=client.V1ContainerStateTerminated(exit_code=0))
        return client.V1ContainerState(waiting=client.V1ContainerStateWaiting(reason=kind))

    statuses = [
        client.V1ContainerStatus(
            name=f"c{i}", image="i", image_id="", ready=False, restart_count=restarts, state=state(s)
        )
        for i, s in enumerate(states)
    ]
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name="p", deletion_timestamp=datetime.now(UTC) if deleting else None),
        status=client.V1PodStatus(container_statuses=statuses or None),
    )


def test_a_replica_may_run_until_its_deleted_pods_containers_have_all_terminated() -> None:
    assert may_still_run(workload_pod(False, "terminated"))  # not deleted: the kubelet restarts it
    assert may_still_run(workload_pod(True, "running"))  # told to stop, still stopping
    assert may_still_run(workload_pod(True))  # never reported a container: only its disappearance tells
    assert may_still_run(workload_pod(True, "ContainerCreating"))  # may be starting as it is deleted
    assert may_still_run(workload_pod(True, "CrashLoopBackOff"))
    assert may_still_run(workload_pod(True, "terminated", "running"))
    assert not may_still_run(workload_pod(True, "terminated"))
    assert not may_still_run(workload_pod(True, "terminated", "terminated"))


def test_a_deleted_pod_whose_replica_said_it_is_done_connects_no_more() -> None:
    done = PodView("p", restarts=1, metrics=Metrics("done", {"ok": 5}))
    holding = PodView("p", restarts=1, metrics=Metrics("holding", {"ok": 5}))  # its pool still holds the ghosts
    finished = finished_replicas([done])
    assert finished == {"p": 1}
    assert finished_replicas([holding]) == {}
    assert not may_still_run(workload_pod(True, "running", restarts=1), finished)  # done, waiting for the signal
    assert may_still_run(workload_pod(False, "running", restarts=1), finished)  # not told to stop yet
    assert may_still_run(workload_pod(True, "running", restarts=2), finished)  # restarted since: a new replica
    assert may_still_run(workload_pod(True, "running", restarts=1), {"other": 1})


def test_step_progress_from_pods() -> None:
    holding = PodView("a", metrics=Metrics("holding", {"ok": 5}))
    done = PodView("b", metrics=Metrics("done", {"ok": 5}))
    crashed = PodView(
        "c",
        restarts=1,
        last_message=json.dumps(
            {
                "phase": "crashed",
                "outcomes": {"ok": 1, "tooManyClients": 1},
                "firstError": "sorry, too many clients already",
                "firstErrorClass": "tooManyClients",
                "firstErrorAt": 1.0,
            }
        ),
    )
    starting = PodView("d")
    assert not work_done([holding, starting], 2)
    assert work_done([holding, done, crashed], 3)
    assert not step_done([holding, done], 2)
    assert step_done([done, crashed], 2)
    assert not step_done([done], 2)  # a replica is missing
    out = {r.name: r for r in reports([done, crashed])}
    assert out["c"].crashed
    assert out["c"].restarts == 1
    assert out["c"].outcomes["tooManyClients"] == 1
    assert out["c"].first_error_class == "tooManyClients"
    assert not out["b"].crashed
    assert out["b"].outcomes == {"ok": 5}


def test_resume_from_status_keeps_finished_steps_and_drops_foreign_keys() -> None:
    from poolbench.core.benchmark import BenchmarkRun
    from poolbench.core.benchmark import status_from_resource as resume_status

    assert resume_status(None) is None
    assert resume_status({"kopf": {}}) is None
    status = resume_status(
        {
            "phase": "Running",
            "kopf": {"progress": {}},
            "totalSteps": 2,
            "variants": [
                {
                    "name": "direct",
                    "steps": [
                        {"replicas": 2, "outcome": "Passed", "startedAt": "t0", "finishedAt": "t1"},
                        {"replicas": 8, "startedAt": "t2"},
                    ],
                }
            ],
        }
    )
    run = BenchmarkRun(SPEC, status, clock=utc_now)
    planned = run.next_step()
    assert planned is not None
    assert (planned.index, planned.replicas) == (2, 8)
    run.begin_step(planned)
    assert [(s.replicas, s.started_at) for s in run.status.variants[0].steps][0] == (2, "t0")
    assert len(run.status.variants[0].steps) == 2


def test_passwords_are_derived_per_benchmark_and_purpose() -> None:
    from poolbench_operator.credentials import derive_password

    key = b"k" * 32
    a = derive_password(key, "uid-1", "superuser")
    assert a == derive_password(key, "uid-1", "superuser")  # the same after an operator restart
    assert len(a) == 32
    assert a.replace("-", "").replace("_", "").isalnum()
    assert (
        len(
            {
                a,
                derive_password(key, "uid-2", "superuser"),
                derive_password(key, "uid-1", "app"),
                derive_password(b"x" * 32, "uid-1", "superuser"),
            }
        )
        == 4
    )


# --- latency and checkout-wait histograms: the workload's own collector, read back by the operator ---


def _workload_metrics_text(measures: Any) -> str:
    """What a replica serves, from the replica's real collector (no engine, no database)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from workload.metrics import MeasuresCollector

    registry = CollectorRegistry()
    registry.register(MeasuresCollector(lambda: measures))
    return generate_latest(registry).decode()


def _measures() -> Any:
    from poolbench.core.histogram import GRID_MS, Histogram, edges_with
    from workload.metrics import Measures

    edges = edges_with([60.0, 0.25])  # the spec's limits: extra edges, listed even when empty
    latency, wait = Histogram(edges), Histogram(edges)
    # Every edge exactly (inclusive upper bounds), just above each, sub-bucket values and beyond the top.
    for bound in (*GRID_MS, 60.0):
        latency.add(bound)
        latency.add(bound * 1.0001)
    for ms in (0.0, 0.01234, 3.3333333, 99.999999, 100.0, 100.0000001, 123456.789, 0.1):
        latency.add(ms)
        wait.add(ms / 7)
    latency.add(2e9)
    wait.add(2.5)
    return Measures(latency, wait, 1764064198.123456, 1764064203.654321)


def test_histograms_round_trip_exactly_through_the_workload_metrics() -> None:
    m = _measures()
    text = _workload_metrics_text(m)
    assert 'poolbench_statement_latency_seconds_bucket{le="0.000001"}' in text  # decimal seconds
    assert 'poolbench_checkout_wait_seconds_bucket{le="0.06"}' in text  # a limit edge
    assert 'poolbench_checkout_wait_seconds_bucket{le="+Inf"}' in text
    assert "poolbench_statement_latency_seconds_count" in text
    assert "poolbench_checkout_wait_seconds_sum" in text
    # Only the 7 non-empty buckets, the 2 limit edges and +Inf are served, not 722 buckets.
    assert text.count("poolbench_checkout_wait_seconds_bucket{") == 10
    parsed = parse_metrics(text)
    # The same counts per bucket on the same edges, sum and max as the replica's summary (to_json: µs-rounded).
    assert parsed.latency.to_json() == m.latency.to_json()
    assert parsed.checkout_wait.to_json() == m.checkout_wait.to_json()
    assert parsed.latency.edges == m.latency.edges
    assert parsed.latency.counts == m.latency.counts
    assert parsed.latency.counts[-1] == 4  # (9.624e8, 1e9] twice, then 1.0001e9 and 2e9 ms: the top bucket
    assert parsed.work_started_at == m.work_started_at
    assert parsed.work_ended_at == m.work_ended_at
    assert parsed.latency.percentile(0.5) == m.latency.percentile(0.5)
    assert parsed.checkout_wait.exceeds(0.95, 60.0) == m.checkout_wait.exceeds(0.95, 60.0)


def test_histograms_before_any_work_are_empty_and_timestamps_unknown() -> None:
    from workload.metrics import Measures

    parsed = parse_metrics(_workload_metrics_text(Measures()))
    assert parsed.latency.total == 0
    assert parsed.checkout_wait.total == 0
    assert parsed.work_started_at is None
    assert parsed.work_ended_at is None
    old = parse_metrics(METRICS_TEXT)  # a replica without histograms: empty, not an error
    assert old.latency.total == 0
    assert old.work_started_at is None


def test_reports_merge_the_crashed_containers_histograms_with_the_running_ones() -> None:
    from poolbench.core.histogram import Histogram

    m = _measures()
    running = parse_metrics(_workload_metrics_text(m) + METRICS_TEXT)
    assert running.phase == "holding"
    assert running.outcomes["ok"] == 42
    crashed_latency, crashed_wait = Histogram(), Histogram()
    crashed_latency.add(7.0)
    crashed_wait.add(30000.5)
    summary = {
        "phase": "crashed",
        "outcomes": {"ok": 1, "tooManyClients": 1},
        "firstError": "sorry",
        "firstErrorClass": "tooManyClients",
        "latencyMs": crashed_latency.to_json(),
        "checkoutWaitMs": crashed_wait.to_json(),
        "workStartedAt": 1764064100.5,
        "workEndedAt": 1764064101.5,
    }
    restarted = PodView("r", restarts=1, metrics=running, last_message=json.dumps(summary))
    fresh = PodView("f", metrics=running)
    out = {r.name: r for r in reports([restarted, fresh])}
    r = out["r"]
    assert r.outcomes == {"ok": 43, "tooManyClients": 3}
    assert r.latency.to_json() == Histogram().merge(crashed_latency).merge(m.latency).to_json()
    assert r.checkout_wait.total == m.checkout_wait.total + 1
    assert r.checkout_wait.max_ms == 30000.5
    assert (r.work_started_at, r.work_ended_at) == (1764064100.5, m.work_ended_at)
    f = out["f"]
    assert f.latency.to_json() == m.latency.to_json()
    assert f.checkout_wait.to_json() == m.checkout_wait.to_json()
    assert (f.work_started_at, f.work_ended_at) == (m.work_started_at, m.work_ended_at)
    assert running.latency.to_json() == m.latency.to_json()  # the pod's metrics were not merged into


# -- spec.variants: one workload per variant, a PgBouncer per pooled one -----------------------------
VARIANTS = parse_spec(
    {
        "steps": [5, 10],
        "postgres": {"maxConnections": 100},
        "workload": {"threads": 15, "role": "superuser", "engine": {"poolClass": "QueuePool"}},
        "variants": [
            {"name": "direct"},
            {
                "name": "tx-nullpool",
                "pooler": {
                    "type": "PgBouncer",
                    "poolMode": "transaction",
                    "defaultPoolSize": 20,
                    "reservePoolSize": 3,
                    "maxClientConn": 200,
                    "replicas": 2,
                },
                "engine": {"poolClass": "NullPool"},
            },
            {
                "name": "session",
                "pooler": {"type": "PgBouncer", "poolMode": "session", "image": "pgb:1", "runAsUser": 70},
            },
        ],
    }
)


def variant_children(spec: PoolBenchmarkSpec = VARIANTS) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["kind"], c["metadata"]["name"]): c for c in built("ab", spec)}


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_variants_build_one_workload_each_and_a_pgbouncer_per_pooled_variant() -> None:
    objs = variant_children()
    assert list(objs) == [
        ("Secret", "ab-credentials"),
        ("Service", "ab-postgres"),
        ("NetworkPolicy", "ab-postgres"),
        ("NetworkPolicy", "ab-workload"),
        ("StatefulSet", "ab-postgres"),
        ("NetworkPolicy", "ab-pgbouncer"),
        ("Deployment", "ab--direct-workload"),
        ("Secret", "ab--tx-nullpool-pgbouncer"),
        ("Service", "ab--tx-nullpool-pgbouncer"),
        ("Deployment", "ab--tx-nullpool-pgbouncer"),
        ("Deployment", "ab--tx-nullpool-workload"),
        ("Secret", "ab--session-pgbouncer"),
        ("Service", "ab--session-pgbouncer"),
        ("Deployment", "ab--session-pgbouncer"),
        ("Deployment", "ab--session-workload"),
    ]
    assert Names("ab", "session").workload == "ab--session-workload"
    assert Names("ab").workload == "ab-workload"
    assert Names("ab", "session").pooler == "ab--session-pgbouncer"
    # child_refs deletes exactly what build_children creates, workloads before what they use
    refs = child_refs("ab", VARIANTS)
    assert sorted(refs) == sorted(objs)
    assert refs[0] == ("Deployment", "ab--session-workload")
    assert refs[-5:] == [
        ("StatefulSet", "ab-postgres"),
        ("NetworkPolicy", "ab-workload"),
        ("NetworkPolicy", "ab-postgres"),
        ("Service", "ab-postgres"),
        ("Secret", "ab-credentials"),
    ]
    # the longest names still fit a DNS label (Service names): 40 + "--" + 11 + "-pgbouncer"
    assert len(Names("b" * 40, "v" * 11).pooler) == 63


def test_each_variant_workload_connects_its_own_way() -> None:
    objs = variant_children()
    expected = {
        "direct": ("ab-postgres", "5432", None, "QueuePool"),
        "tx-nullpool": ("ab--tx-nullpool-pgbouncer", "6432", "PgBouncer", "NullPool"),
        "session": ("ab--session-pgbouncer", "6432", "PgBouncer", "QueuePool"),
    }
    for variant, (host, port, pooler, pool_class) in expected.items():
        dep = objs[("Deployment", f"ab--{variant}-workload")]
        for where in (
            dep["metadata"]["labels"],
            dep["spec"]["selector"]["matchLabels"],
            dep["spec"]["template"]["metadata"]["labels"],
        ):
            assert where[VARIANT_LABEL] == variant
            assert where["app.kubernetes.io/component"] == "workload"
        env = env_of(dep)
        assert env["PGHOST"]["value"] == host
        assert env["PGPORT"]["value"] == port
        assert env.get("POOLBENCH_POOLER", {}).get("value") == pooler
        assert json.loads(env["POOLBENCH_ENGINE"]["value"])["poolClass"] == pool_class
        assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "ab-credentials", "key": "postgres-password"}
        assert env["POOLBENCH_EXIT_AFTER_HOLD"]["value"] == "false"
        assert dep["spec"]["replicas"] == 0
        assert "S3CRET" not in json.dumps(dep)
        assert "ADMINPW" not in json.dumps(dep)


def test_pgbouncer_config_serves_the_workload_role_and_the_admin() -> None:
    objs = variant_children()
    data = objs[("Secret", "ab--tx-nullpool-pgbouncer")]["stringData"]
    assert set(data) == {"pgbouncer.ini", "userlist.txt"}
    ini = data["pgbouncer.ini"]
    for line in (
        "postgres = host=ab-postgres port=5432 dbname=postgres",
        "listen_addr = *",
        "listen_port = 6432",
        "pool_mode = transaction",
        "default_pool_size = 20",
        "reserve_pool_size = 3",
        "max_client_conn = 200",
        f"auth_file = {CONFIG_DIR}/userlist.txt",
        f"admin_users = {ADMIN_USER}",
    ):
        assert line in ini.splitlines(), line
    assert data["userlist.txt"] == f'"{ADMIN_USER}" "ADMINPW"\n"postgres" "S3CRET"\n'
    session = objs[("Secret", "ab--session-pgbouncer")]["stringData"]["pgbouncer.ini"]
    assert "pool_mode = session" in session.splitlines()
    # role app: the app role and its password
    app = VARIANTS.model_copy(update={"workload": VARIANTS.workload.model_copy(update={"role": "app"})})
    users = variant_children(app)[("Secret", "ab--session-pgbouncer")]["stringData"]["userlist.txt"]
    assert '"poolbench_app" "APPPW"' in users
    assert "S3CRET" not in users
    dep = variant_children(app)[("Deployment", "ab--session-workload")]
    assert env_of(dep)["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "app-password"


def test_pgbouncer_pods_are_restricted_and_read_their_config_from_the_secret() -> None:
    objs = variant_children()
    dep = objs[("Deployment", "ab--tx-nullpool-pgbouncer")]
    assert dep["spec"]["replicas"] == 2
    assert objs[("Deployment", "ab--session-pgbouncer")]["spec"]["replicas"] == 1
    pod = dep["spec"]["template"]["spec"]
    for where in (
        dep["metadata"]["labels"],
        dep["spec"]["selector"]["matchLabels"],
        dep["spec"]["template"]["metadata"]["labels"],
    ):
        assert where[VARIANT_LABEL] == "tx-nullpool"
        assert where["app.kubernetes.io/component"] == "pgbouncer"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 998
    assert "runAsGroup" not in pod["securityContext"]  # the image user's own group
    assert pod["automountServiceAccountToken"] is False
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/cloudnative-pg/pgbouncer:1.24.0"
    assert c["command"] == ["pgbouncer", f"{CONFIG_DIR}/pgbouncer.ini"]
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert c["readinessProbe"]["tcpSocket"]["port"] == 6432
    assert c["resources"]["requests"]
    assert c["resources"]["limits"]
    assert c["volumeMounts"] == [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    assert pod["volumes"][0]["secret"]["secretName"] == "ab--tx-nullpool-pgbouncer"
    assert "ADMINPW" not in json.dumps(dep)
    svc = objs[("Service", "ab--tx-nullpool-pgbouncer")]["spec"]
    assert svc["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["ports"][0]["port"] == 6432
    other = objs[("Deployment", "ab--session-pgbouncer")]["spec"]["template"]["spec"]
    assert other["containers"][0]["image"] == "pgb:1"
    assert other["securityContext"]["runAsUser"] == 70


def test_without_variants_the_children_are_exactly_as_before() -> None:
    objs = built("demo", SPEC)
    assert [(c["kind"], c["metadata"]["name"]) for c in objs] == [
        ("Secret", "demo-credentials"),
        ("Service", "demo-postgres"),
        ("NetworkPolicy", "demo-postgres"),
        ("NetworkPolicy", "demo-workload"),
        ("StatefulSet", "demo-postgres"),
        ("Deployment", "demo-workload"),
    ]
    assert VARIANT_LABEL not in json.dumps(objs)
    assert "POOLBENCH_POOLER" not in json.dumps(objs)
    assert objs[-1]["spec"]["selector"]["matchLabels"] == {
        "poolbench.dev/benchmark": "demo",
        "app.kubernetes.io/component": "workload",
    }
    assert child_refs("demo", SPEC) == [
        ("Deployment", "demo-workload"),
        ("StatefulSet", "demo-postgres"),
        ("NetworkPolicy", "demo-workload"),
        ("NetworkPolicy", "demo-postgres"),
        ("Service", "demo-postgres"),
        ("Secret", "demo-credentials"),
    ]
    # spec.variants with one direct variant is still a variant: its own names
    one = parse_spec({"steps": [1], "variants": [{"name": "direct"}]})
    assert [c["metadata"]["name"] for c in built("demo", one)][-1] == "demo--direct-workload"


class FakeKube:
    """What the driver asks of the Kubernetes edge, recorded."""

    namespace = "ns"

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.results = "written"  # what a write of the results ConfigMap comes to

    def scale_workload(self, names: Names, replicas: int) -> None:
        self.calls.append(("scale", names.workload, replicas))

    def scale_deployment(self, name: str, replicas: int) -> None:
        self.calls.append(("scale", name, replicas))

    def roll_workload(self, names: Names, token: str) -> None:
        self.calls.append(("roll", names.workload))

    def workload_stopped(self, benchmark: str, seconds: float, finished: Any) -> bool:
        return True

    def pooler_pod_ips(self, benchmark: str, variant: str) -> list[str]:
        return ["10.0.0.7", "10.0.0.8"]

    def workload_pods(self, benchmark: str, variant: str | None = None) -> list[Any]:
        self.calls.append(("pods", variant))
        return []

    def delete_children(self, refs: list[tuple[str, str]]) -> None:
        self.calls.append(("delete", refs))

    def with_results(self, status: dict[str, Any] | None) -> dict[str, Any] | None:
        return status

    def write_results(self, config_map: dict[str, Any], owner_uid: str) -> str:
        self.calls.append(("results", config_map["metadata"]["name"]))
        return self.results

    def patch_status(self, name: str, status: dict[str, Any]) -> None:
        self.calls.append(("status", status.get("resultsConfigMap")))


class FakePoolerProbe:
    made: list[Any] = []
    log: list[str]

    def __init__(self, connects: Any, database: str) -> None:
        self.connects, self.database, self.log = connects, database, []
        FakePoolerProbe.made.append(self)

    def drop_server_connections(self) -> bool:
        self.log.append("drop")
        return True

    def close(self) -> None:
        self.log.append("close")


class FakeStop:
    def wait(self, timeout: float | None = None) -> bool:
        return False


def driver_for(
    spec: PoolBenchmarkSpec, monkeypatch: pytest.MonkeyPatch, address: str = "pod-ip"
) -> tuple[Any, list[tuple[Any, ...]]]:
    import logging

    from poolbench_operator import driver as driver_module
    from poolbench_operator.config import Config

    posted: list[tuple[Any, ...]] = []
    d = driver_module.Driver(
        kube=cast(Any, FakeKube()),
        body={"metadata": {"name": "ab", "uid": "u-1", "generation": 1}},
        spec=spec,
        stopped=FakeStop(),
        adopt=lambda child: None,
        event=lambda *e: posted.append(e),
        logger=logging.getLogger("test"),
        config=Config(postgres_address=address),
        key=b"k" * 32,
    )
    return d, posted


def unstarted_monitor(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The monitor both platforms use, never started (it reads nothing), with a fake pooler probe."""
    from poolbench.db import monitor

    monkeypatch.setattr(monitor, "PoolerProbe", FakePoolerProbe)
    FakePoolerProbe.made = []

    def unreachable(**kw: Any) -> Any:
        raise AssertionError("an unstarted monitor connects to nothing")

    return monitor.Monitor(unreachable, interval=0.1, t0=0.0)


def use_variant(d: Any, monitor: Any, planned: Any) -> None:
    """What the step loop does before a variant's first step."""
    monitor.watch_pooler(())
    monitor.watch_pooler(d.use_variant(planned))


def sampled(monitor: Any) -> Any:
    """The pooler probe the monitor's sampler reads."""
    assert monitor.sampler.pooler is monitor.pooler
    return monitor.sampler.pooler


def test_driver_points_each_variant_at_its_workload_and_pooler(monkeypatch: pytest.MonkeyPatch) -> None:
    from poolbench_operator.credentials import derive_password

    d, _ = driver_for(VARIANTS, monkeypatch)
    monitor = unstarted_monitor(monkeypatch)
    direct, tx, session = (plan[0] for plan in d.run.plans)
    d.scale_to_zero()  # a resumed run's clean slate: before any variant, every workload goes to 0
    assert d.kube.calls == [("scale", f"ab--{v}-workload", 0) for v in ("direct", "tx-nullpool", "session")]
    d.kube.calls.clear()
    use_variant(d, monitor, direct)
    assert sampled(monitor) is None
    assert not FakePoolerProbe.made
    d.scale(direct)
    d.observe(direct.replicas)
    assert d.kube.calls == [("scale", "ab--direct-workload", 5), ("pods", "direct")]
    d.kube.calls.clear()
    use_variant(d, monitor, tx)
    assert len(FakePoolerProbe.made) == 1
    probe: Any = FakePoolerProbe.made[0]
    assert sampled(monitor) is probe
    assert len(probe.connects) == 2
    assert probe.database == "postgres"
    assert [c.args for c in probe.connects] == [("tx-nullpool", 0), ("tx-nullpool", 1)]  # one console per pod
    assert d.kube.calls == [("scale", "ab--tx-nullpool-pgbouncer", 2)]
    assert d.pooler_admin_password == derive_password(b"k" * 32, "u-1", "pooler-admin")
    d.kube.calls.clear()
    d.scale_to_zero()
    monitor.drop_pooler_connections()  # the loop's clean slate, once the pods are gone
    assert d.kube.calls == [("scale", "ab--tx-nullpool-workload", 0)]
    assert probe.log == ["drop"]
    use_variant(d, monitor, session)  # the previous variant's probe is closed, the new one sampled
    assert probe.log == ["drop", "close"]
    assert sampled(monitor) is FakePoolerProbe.made[1]
    monitor.stop()
    assert sampled(monitor) is None
    assert FakePoolerProbe.made[1].log == ["close"]


def test_driver_cleanup_scales_poolers_down_or_deletes_every_child(monkeypatch: pytest.MonkeyPatch) -> None:
    d, posted = driver_for(VARIANTS, monkeypatch)
    d.cleanup()  # ScaleDown (the default)
    assert d.kube.calls == [("scale", "ab--tx-nullpool-pgbouncer", 0), ("scale", "ab--session-pgbouncer", 0)]
    assert posted[-1][1] == "Cleanup"
    assert "PgBouncer scaled to 0" in posted[-1][2]
    d, posted = driver_for(VARIANTS.model_copy(update={"cleanup": "Delete"}), monkeypatch)
    d.cleanup()
    assert d.kube.calls == [("delete", child_refs("ab", VARIANTS))]
    d, posted = driver_for(SPEC, monkeypatch)  # no variants: the workload only
    d.cleanup()
    assert d.kube.calls == []
    assert posted[-1][2] == "workload scaled to 0; PostgreSQL kept for inspection"


def test_a_results_configmap_that_is_someone_elses_is_left_alone_and_not_pointed_at(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each forced write saves the whole status first; when the name is taken by a ConfigMap that is not
    the benchmark's, the status does not name it, one warning says so, and it is not tried again."""
    d, posted = driver_for(SPEC, monkeypatch)
    d.patch(force=True)
    assert d.kube.calls == [("results", "ab-results"), ("status", "ab-results")]
    d, posted = driver_for(SPEC, monkeypatch)
    d.kube.results = "foreign"
    d.patch(force=True)
    d.patch(force=True)
    assert d.kube.calls == [("results", "ab-results"), ("status", None), ("status", None)]
    assert [e[:2] for e in posted] == [("Warning", "ResultsNotKept")]
    assert "ConfigMap ab-results already exists and is not this benchmark's" in posted[0][2]


def test_a_status_too_large_for_its_configmap_keeps_the_copy_written_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API server refuses a ConfigMap over 1 MiB: the copy written before stays named (its steps keep
    their detail), one warning gives the size, and the run goes on; never written, nothing is named."""
    d, posted = driver_for(SPEC, monkeypatch)
    d.patch(force=True)
    d.kube.results = "tooLarge"
    d.patch(force=True)
    d.patch(force=True)
    assert d.kube.calls == [
        ("results", "ab-results"),
        ("status", "ab-results"),
        ("results", "ab-results"),
        ("status", "ab-results"),
        ("status", "ab-results"),
    ]
    assert [e[:2] for e in posted] == [("Warning", "ResultsNotKept")]
    assert "bytes of JSON) is more than ConfigMap ab-results may hold (1 MiB)" in posted[0][2]
    d, posted = driver_for(SPEC, monkeypatch)
    d.kube.results = "tooLarge"
    d.patch(force=True)
    assert d.kube.calls == [("results", "ab-results"), ("status", None)]


def test_driver_without_pod_ip_access_says_the_pooler_is_not_sampled(monkeypatch: pytest.MonkeyPatch) -> None:
    d, posted = driver_for(VARIANTS, monkeypatch, address="127.0.0.1:15432")
    monitor = unstarted_monitor(monkeypatch)
    use_variant(d, monitor, d.run.plans[1][0])
    assert sampled(monitor) is None
    assert not FakePoolerProbe.made
    assert posted
    assert posted[-1][:2] == ("Warning", "PoolerNotSampled")


def test_a_measured_rollout_is_the_deployments_own_rolling_update_held_at_its_first_surge() -> None:
    rolled = parse_spec({"steps": [3], "stepTimeoutSeconds": 120, "rollout": {"maxSurge": "25%", "measure": True}})
    deployment = {c["kind"]: c for c in built("demo", rolled)}["Deployment"]["spec"]
    assert deployment["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
    }
    # No new pod becomes available while a step may last: the controller replaces no old pod meanwhile.
    assert deployment["minReadySeconds"] == 180
    assert deployment["progressDeadlineSeconds"] == 780
    none = parse_spec({"steps": [3], "rollout": {"maxSurge": 0, "measure": True}})
    spec = {c["kind"]: c for c in built("demo", none)}["Deployment"]["spec"]
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}  # the API refuses 0 and 0
    for unmeasured in ({"maxSurge": 1}, None):
        plain = parse_spec({"steps": [3], **({"rollout": unmeasured} if unmeasured else {})})
        objs = {c["kind"]: c for c in built("demo", plain)}
        assert "strategy" not in objs["Deployment"]["spec"]
        assert "minReadySeconds" not in objs["Deployment"]["spec"]
    assert ROLLOUT_ANNOTATION == "poolbench.dev/rollout"


def test_driver_starts_a_rollouts_surge_with_a_new_pod_template_not_a_scale_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    rolled = parse_spec({"steps": [3], "rollout": {"maxSurge": 1, "measure": True}})
    d, _ = driver_for(rolled, monkeypatch)
    step = replace(d.run.plans[0][0], replicas=4, rollout_from=3)
    d.scale(replace(step, replicas=3))  # the old replicas: a scale
    d.scale(step)  # the surge: the Deployment's RollingUpdate starts it
    assert d.kube.calls == [("scale", "ab-workload", 3), ("roll", "ab-workload")]
