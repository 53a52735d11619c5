"""A PoolBenchmark of the user's own Deployment against the user's own PostgreSQL, on a real API server,
controller-manager and the test pod runner, with the operator under its chart's ServiceAccount.

The "user's" server is a postgres pod (max_connections 20: 17 usable by a normal role); the "user's"
app is a Deployment whose pods each open ``CONNS`` connections to it by its pod IP and hold them. The
operator reaches the server by pod IP too (spec.database.host: an address, as for a server outside the
cluster). Refusals (annotation, HPA, monitor role), the restore of the replica count after the end, a
deletion mid-step and an operator killed mid-step, Observe recording a scale made by hand, the safety
stop before the server refuses, and the RBAC the operator has for all this.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from poolbench.core.contracts import operator_metrics as m
from tests.harness.kube import wait_for
from tests.harness.operator import create_namespace, kubectl
from tests.harness.opmetrics import of_benchmark, scrape
from tests.harness.status_cases import kstatus

from .test_operator_e2e import GROUP_PATH, apply_benchmark, benchmark, events, wait_phase

pytestmark = pytest.mark.k8s

SUPERUSER_PASSWORD = "superuser-pw-for-tests"
MONITOR_PASSWORD = "Monitor-Pw-9f2c41d7e"  # must appear nowhere: status, events, the operator's log
NOMON_PASSWORD = "NoMonitor-Pw-3be07a51"
APP_PASSWORD = "app-pw"
MAX_CONNECTIONS = 20  # 17 usable by a normal role (3 superuser-reserved)

HOLDER = """
import os, sys, time
import psycopg2
conns = []
for _ in range(int(os.environ["CONNS"])):
    conns.append(psycopg2.connect(host=os.environ["PGHOST"], user=os.environ["PGUSER"],
                                  password=os.environ["PGPASSWORD"], dbname="postgres", connect_timeout=5))
print("holding", len(conns), flush=True)
time.sleep(3600)
"""


@pytest.fixture(scope="module")
def user_pg(operator: Any, kube: Any) -> Iterator[str]:
    """The user's PostgreSQL: a postgres pod; its roles (pb_monitor with pg_monitor, pb_nomon without,
    app). Returns its pod IP."""
    ns = create_namespace(kube, "userdb")
    kube.create(
        f"/api/v1/namespaces/{ns}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "pg", "labels": {"app": "pg"}},
            "spec": {
                "containers": [
                    {
                        "name": "postgres",
                        "image": "postgres:18",
                        "args": ["-c", f"max_connections={MAX_CONNECTIONS}"],
                        "env": [{"name": "POSTGRES_PASSWORD", "value": SUPERUSER_PASSWORD}],
                    }
                ]
            },
        },
    )

    def ip() -> str | None:
        pod = kube.get(f"/api/v1/namespaces/{ns}/pods/pg")
        return (pod.get("status") or {}).get("podIP")

    host = wait_for(ip, 120, what="the user's postgres pod IP")

    def superuser() -> Any:
        try:
            return psycopg2.connect(
                host=host, user="postgres", password=SUPERUSER_PASSWORD, dbname="postgres", connect_timeout=3
            )
        except psycopg2.OperationalError:
            return None

    conn = wait_for(superuser, 120, interval=1.0, what="the user's postgres accepting connections")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE ROLE pb_monitor LOGIN PASSWORD '{MONITOR_PASSWORD}' CONNECTION LIMIT 3")
        cur.execute("GRANT pg_monitor TO pb_monitor")
        cur.execute("GRANT pg_use_reserved_connections TO pb_monitor")
        cur.execute(f"CREATE ROLE pb_nomon LOGIN PASSWORD '{NOMON_PASSWORD}' CONNECTION LIMIT 3")
        cur.execute(f"CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'")
        cur.execute(f"CREATE ROLE app_limited LOGIN PASSWORD '{APP_PASSWORD}' CONNECTION LIMIT 1")
    conn.close()
    yield host
    kube.delete(f"/api/v1/namespaces/{ns}")


def monitor_secret(kube: Any, ns: str, username: str = "pb_monitor", password: str = MONITOR_PASSWORD) -> None:
    kube.create(
        f"/api/v1/namespaces/{ns}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "pb-monitor"},
            "stringData": {"username": username, "password": password},
        },
    )


def app_deployment(
    kube: Any,
    ns: str,
    pg_host: str,
    *,
    replicas: int = 1,
    conns: int = 2,
    annotated: bool = True,
    labels: dict[str, str] | None = None,
    user: str = "app",
) -> None:
    annotations = {"poolbench.dev/allow-scaling": "true"} if annotated else {}
    kube.create(
        f"/apis/apps/v1/namespaces/{ns}/deployments",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "my-app", "annotations": annotations, "labels": labels or {}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "my-app"}},
                "template": {
                    "metadata": {"labels": {"app": "my-app"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "containers": [
                            {
                                "name": "app",
                                "image": "my-app:1",
                                "command": ["python", "-c", HOLDER],
                                "terminationMessagePolicy": "FallbackToLogsOnError",
                                "env": [
                                    {"name": "PGHOST", "value": pg_host},
                                    {"name": "PGUSER", "value": user},
                                    {"name": "PGPASSWORD", "value": APP_PASSWORD},
                                    {"name": "CONNS", "value": str(conns)},
                                ],
                            }
                        ],
                    },
                },
            },
        },
    )


def own_app(name: str, pg_host: str, mode: str, steps: list[int] | None = None, **target: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "database": {
            "host": pg_host,
            "dbname": "postgres",
            "sslmode": "disable",
            "monitorSecret": {"name": "pb-monitor"},
        },
        "target": {"deployment": "my-app", "mode": mode, **target},
        "sampling": {"intervalMs": 200},
        "stepTimeoutSeconds": 90,
    }
    if steps is not None:
        spec["steps"] = steps
    return {"apiVersion": "poolbench.dev/v1alpha1", "kind": "PoolBenchmark", "metadata": {"name": name}, "spec": spec}


def replicas(kube: Any, ns: str) -> int:
    return int(kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/my-app")["spec"]["replicas"])


def ready_pods(kube: Any, ns: str) -> int:
    pods = kube.items(f"/api/v1/namespaces/{ns}/pods", labelSelector="app=my-app")
    return sum(
        1
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in (p.get("status") or {}).get("conditions", []))
    )


def assert_no_password(kube: Any, ns: str, name: str, operator: Any) -> None:
    obj = kube.get_or_none(f"{GROUP_PATH}/namespaces/{ns}/poolbenchmarks/{name}")
    text = json.dumps(obj) + json.dumps(events(kube, ns, name)) + operator.log()
    assert MONITOR_PASSWORD not in text
    assert NOMON_PASSWORD not in text


def test_step_is_refused_without_the_allow_scaling_annotation(operator: Any, control_plane: Any, kube: Any) -> None:
    ns = create_namespace(kube, "noannot")
    app_deployment(kube, ns, "127.0.0.1", replicas=2, annotated=False)
    apply_benchmark(control_plane, ns, own_app("steps", "127.0.0.1", "Step", steps=[1, 3]))
    status = wait_phase(kube, ns, "steps", timeout=90)["status"]
    assert status["phase"] == "Failed"
    assert 'poolbench.dev/allow-scaling: "true"' in status["message"]
    assert f"kubectl -n {ns} annotate deployment my-app poolbench.dev/allow-scaling=true" in status["message"]
    assert status["target"].get("originalReplicas") is None
    assert replicas(kube, ns) == 2
    assert any(e["reason"] == "Refused" for e in events(kube, ns, "steps"))
    kube.delete(f"/api/v1/namespaces/{ns}")


def test_step_is_refused_while_an_hpa_targets_the_deployment_and_observe_records_it(
    operator: Any, control_plane: Any, kube: Any, user_pg: str
) -> None:
    ns = create_namespace(kube, "hpa")
    monitor_secret(kube, ns)
    app_deployment(kube, ns, user_pg, replicas=1, conns=2)
    kube.create(
        f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "my-app"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "my-app"},
                "minReplicas": 1,
                "maxReplicas": 5,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
                    }
                ],
            },
        },
    )
    apply_benchmark(control_plane, ns, own_app("steps", user_pg, "Step", steps=[2]))
    status = wait_phase(kube, ns, "steps", timeout=90)["status"]
    assert status["phase"] == "Failed"
    assert "HorizontalPodAutoscaler my-app targets Deployment my-app" in status["message"]
    assert replicas(kube, ns) == 1
    wait_for(lambda: ready_pods(kube, ns) == 1, 60, what="the app pod ready")
    apply_benchmark(control_plane, ns, own_app("watch", user_pg, "Observe", durationSeconds=6))
    status = wait_phase(kube, ns, "watch", timeout=120)["status"]
    assert status["phase"] == "Completed", status.get("message")
    target = status["target"]
    assert target["hpa"] == "my-app"
    assert target["hpaMaxReplicas"] == 5
    assert target["answer"]["hpaMax"] == 5
    assert target["answer"]["perPod"] == 2
    # 5 replicas + 25% surge (2 pods) = 7 pods × 2 connections
    assert target["answer"]["neededAtHpaMax"] == 14
    assert "your HPA's max of 5 replicas" in target["answerWords"]
    assert replicas(kube, ns) == 1
    assert_no_password(kube, ns, "watch", operator)
    kube.delete(f"/api/v1/namespaces/{ns}")


def test_a_monitor_role_without_pg_monitor_is_refused_with_the_grant(
    operator: Any, control_plane: Any, kube: Any, user_pg: str
) -> None:
    ns = create_namespace(kube, "nomon")
    monitor_secret(kube, ns, username="pb_nomon", password=NOMON_PASSWORD)
    app_deployment(kube, ns, user_pg, replicas=1)
    apply_benchmark(control_plane, ns, own_app("watch", user_pg, "Observe", durationSeconds=5))
    status = wait_phase(kube, ns, "watch", timeout=90)["status"]
    assert status["phase"] == "Failed"
    assert 'GRANT pg_monitor TO "pb_nomon";' in status["message"]
    assert any("GRANT pg_monitor" in e["message"] for e in events(kube, ns, "watch"))
    assert_no_password(kube, ns, "watch", operator)
    kube.delete(f"/api/v1/namespaces/{ns}")


def test_step_measures_per_step_and_restores_the_replicas_when_it_finishes(
    operator: Any, control_plane: Any, kube: Any, user_pg: str
) -> None:
    wait_for(lambda: app_backends(user_pg) == 0, 60, interval=1.0, what="no app connection left by other tests")
    ns = create_namespace(kube, "stepdone")
    monitor_secret(kube, ns)
    app_deployment(kube, ns, user_pg, replicas=1, conns=2, labels={"app.kubernetes.io/managed-by": "Helm"})
    load = {"image": "load:1", "command": ["python", "-c", "import time; time.sleep(600)"]}
    pools = {"processes": 2, "threads": 1, "engine": {"poolClass": "NullPool"}}  # 2 per pod, as the pods hold
    apply_benchmark(
        control_plane, ns, own_app("steps", user_pg, "Step", steps=[2, 3], holdSeconds=5, load=load, pools=pools)
    )
    seen_scaled = []
    seen_jobs: set[str] = set()
    job_owners: set[str] = set()

    def done() -> Any:
        seen_scaled.append(replicas(kube, ns))
        for job in kube.items(f"/apis/batch/v1/namespaces/{ns}/jobs"):
            seen_jobs.add(job["metadata"]["name"])
            job_owners.update(o["name"] for o in job["metadata"].get("ownerReferences", []))
        obj = benchmark(kube, ns, "steps")
        return obj if (obj.get("status") or {}).get("phase") in ("Completed", "Failed", "Invalid") else None

    obj = wait_for(done, 240, interval=0.5, what="the Step benchmark to end")
    status = obj["status"]
    assert status["phase"] == "Completed", status.get("message")
    assert 3 in seen_scaled
    database = status["database"]
    assert database["maxConnections"] == MAX_CONNECTIONS
    assert database["superuserReservedConnections"] == 3
    assert database["usableForNormalRole"] == MAX_CONNECTIONS - 3
    assert database["serverVersionNum"] >= 160000
    assert database["monitorRole"] == "pb_monitor"
    target = status["target"]
    assert target["originalReplicas"] == 1
    assert target["restored"] is True
    assert target["restoreMessage"] == "replicas restored to 1 (read back from the Deployment)"
    assert [s["replicas"] for s in target["steps"]] == [2, 3]
    assert all(s["ready"] for s in target["steps"])
    assert [s["observation"]["appPeak"] for s in target["steps"]] == [4, 6]
    assert [s["observation"]["perPodPeak"] for s in target["steps"]] == [2, 2]
    assert [s["loadJob"] for s in target["steps"]] == ["steps-load-1", "steps-load-2"]
    assert seen_jobs <= {"steps-load-1", "steps-load-2"}
    assert seen_jobs, "a load Job ran during a hold"
    assert job_owners == {"steps"}
    assert live_jobs(kube, ns) == [], "every load Job is deleted after its hold"
    assert any("app.kubernetes.io/managed-by=Helm" in w for w in target["warnings"])
    assert [(s["pools"]["predictedPerPod"], s["pools"]["measuredPerPod"]) for s in target["steps"]] == [(2, 2), (2, 2)]
    assert target["pools"]["overPredicted"] is False
    assert (
        "predicted 2 per pod from your pools (2 processes × (NullPool, one per thread: 1 thread)), measured 2"
        in target["answerWords"]
    )
    assert target["answer"]["perPod"] == 2
    assert target["answer"]["perPodFrom"] == "measured"
    assert target["answer"]["others"] == 0, "a new pod's backends are its own, not another tenant's"
    assert status["verdict"]["maxSafeReplicas"] == target["answer"]["safeInRollout"]
    assert replicas(kube, ns) == 1
    reasons = [e["reason"] for e in events(kube, ns, "steps")]
    assert "GitOpsOwner" in reasons
    assert "Restored" in reasons
    assert status["replicas"] == 1
    assert status["progress"] == "2/2"
    printed = kubectl(control_plane, "-n", ns, "get", "poolbenchmarks", "steps").stdout
    assert printed.split("\n")[1].split()[1:4] == ["Completed", "2/2", "1"]
    assert kstatus([obj])["steps"].get("status") == "Current"  # as Flux and kpt read it (docs/guides/gitops.md)
    assert_no_password(kube, ns, "steps", operator)
    kube.delete(f"/api/v1/namespaces/{ns}")


def live_jobs(kube: Any, ns: str) -> list[str]:
    jobs = kube.items(f"/apis/batch/v1/namespaces/{ns}/jobs")
    return sorted(j["metadata"]["name"] for j in jobs if not j["metadata"].get("deletionTimestamp"))


def wait_mid_step(kube: Any, ns: str, name: str, to: int) -> None:
    def scaled() -> bool:
        status = benchmark(kube, ns, name).get("status") or {}
        steps = (status.get("target") or {}).get("steps") or []
        return bool(steps) and replicas(kube, ns) == to

    wait_for(scaled, 120, interval=0.5, what=f"{name} scaled to {to}")


def test_a_benchmark_deleted_mid_step_restores_the_replicas(
    operator: Any, control_plane: Any, kube: Any, user_pg: str
) -> None:
    ns = create_namespace(kube, "stepdel")
    monitor_secret(kube, ns)
    app_deployment(kube, ns, user_pg, replicas=1, conns=1)
    apply_benchmark(control_plane, ns, own_app("steps", user_pg, "Step", steps=[3], holdSeconds=300))
    wait_mid_step(kube, ns, "steps", 3)
    assert benchmark(kube, ns, "steps")["status"]["target"]["originalReplicas"] == 1
    kubectl(control_plane, "-n", ns, "delete", "poolbenchmark", "steps", "--timeout=90s")
    assert kube.get_or_none(f"{GROUP_PATH}/namespaces/{ns}/poolbenchmarks/steps") is None
    assert replicas(kube, ns) == 1
    kube.delete(f"/api/v1/namespaces/{ns}")


def test_an_operator_killed_mid_step_restores_the_replicas_when_it_starts_again(
    operator: Any, control_plane: Any, kube: Any, user_pg: str
) -> None:
    ns = create_namespace(kube, "stepkill")
    monitor_secret(kube, ns)
    app_deployment(kube, ns, user_pg, replicas=1, conns=1)
    load = {"image": "load:1", "command": ["python", "-c", "import time; time.sleep(600)"]}
    apply_benchmark(control_plane, ns, own_app("steps", user_pg, "Step", steps=[2, 3], holdSeconds=300, load=load))
    wait_mid_step(kube, ns, "steps", 2)
    wait_for(lambda: live_jobs(kube, ns) == ["steps-load-1"], 120, interval=0.5, what="the load Job of the hold")
    operator.stop(signal.SIGKILL)
    time.sleep(1.0)
    assert replicas(kube, ns) == 2, "killed: nothing restored it yet"
    operator.start()
    status = wait_phase(kube, ns, "steps", timeout=120)["status"]
    assert status["phase"] == "Failed"
    assert status["message"].startswith("the operator restarted during step 1: replicas restored to 1")
    assert status["target"]["restored"] is True
    assert replicas(kube, ns) == 1
    assert any(e["reason"] == "Restored" for e in events(kube, ns, "steps"))
    assert live_jobs(kube, ns) == [], "the cut hold's load Job is deleted"
    kubectl(control_plane, "-n", ns, "delete", "poolbenchmark", "steps", "--timeout=90s")
    assert replicas(kube, ns) == 1
    kube.delete(f"/api/v1/namespaces/{ns}")


def live_backends(url: str, ns: str, name: str) -> float:
    served = of_benchmark(scrape(url), ns, name)
    return sum(served.get((m.BACKENDS, ((m.STATE_LABEL, state),)), 0) for state in m.STATES)


def test_observe_records_a_scale_made_by_hand_and_changes_nothing(
    operator: Any, control_plane: Any, kube: Any, user_pg: str
) -> None:
    ns = create_namespace(kube, "observe")
    monitor_secret(kube, ns)
    app_deployment(kube, ns, user_pg, replicas=1, conns=2, annotated=False)
    wait_for(lambda: ready_pods(kube, ns) == 1, 60, what="the app pod ready")
    pools = {"threads": 1}  # the pods hold 2: more than one connection per thread's QueuePool
    apply_benchmark(control_plane, ns, own_app("watch", user_pg, "Observe", durationSeconds=25, pools=pools))
    wait_phase(kube, ns, "watch", phases=("Running",), timeout=60)
    # A live connection-budget monitor: the operator's /metrics has the app's backends by state now.
    wait_for(
        lambda: live_backends(operator.metrics_url, ns, "watch") >= 2,
        20,
        interval=0.3,
        what="the app pod's backends on /metrics",
    )
    time.sleep(4)
    kubectl(control_plane, "-n", ns, "scale", "deployment/my-app", "--replicas=2")
    status = wait_phase(kube, ns, "watch", timeout=120)["status"]
    assert status["phase"] == "Completed", status.get("message")
    served = of_benchmark(scrape(operator.metrics_url), ns, "watch")
    assert served[(m.PEAK_BACKENDS, ())] == status["peakConnections"] == 4
    assert served[(m.USABLE_CONNECTIONS, ())] == status["database"]["usableForNormalRole"]
    assert served[(m.MAX_CONNECTIONS, ())] == status["maxConnections"] == MAX_CONNECTIONS
    assert served[(m.PHASE, ((m.PHASE_LABEL, "Completed"),))] == 1
    assert live_backends(operator.metrics_url, ns, "watch") == 0
    target = status["target"]
    seen = [p["replicas"] for p in target["replicasOverTime"]]
    assert 1 in seen
    assert 2 in seen
    assert seen.index(1) < seen.index(2)
    observation = target["observation"]
    assert len(observation["pods"]) == 2
    assert observation["perPodPeak"] == 2
    assert observation["appPeak"] == 4
    assert observation["minHeadroom"] <= MAX_CONNECTIONS - 3 - 4
    assert (target["pools"]["predictedPerPod"], target["pools"]["measuredPerPod"]) == (1, 2)
    assert target["pools"]["overPredicted"] is True
    assert "measured 2: a pod held 1 more than its pools allow" in target["answerWords"]
    assert target.get("originalReplicas") is None
    assert replicas(kube, ns) == 2  # as the user left it
    assert status["verdict"]["summary"] == target["answerWords"]
    kube.delete(f"/api/v1/namespaces/{ns}")


def test_an_operator_killed_mid_watch_goes_on_to_the_watchs_end_with_what_it_read(
    operator: Any, control_plane: Any, kube: Any, user_pg: str
) -> None:
    """Observe for 30 s, the operator SIGKILLed about 8 s in and started again 4 s later: the watch is
    not begun again; it goes on to its end from when it began, keeps the reads before the kill, and
    says how long nothing was read."""
    ns = create_namespace(kube, "watchkill")
    monitor_secret(kube, ns)
    app_deployment(kube, ns, user_pg, replicas=1, conns=2, annotated=False)
    wait_for(lambda: ready_pods(kube, ns) == 1, 60, what="the app pod ready")
    apply_benchmark(control_plane, ns, own_app("watch", user_pg, "Observe", durationSeconds=30))

    def observed(reads: int) -> dict[str, Any] | None:
        target = (benchmark(kube, ns, "watch").get("status") or {}).get("target") or {}
        seen = target.get("observation") or {}
        return target if seen.get("reads", 0) >= reads and seen.get("appPeak") == 2 else None

    before = wait_for(lambda: observed(20), 60, interval=0.3, what="20 reads of the app's 2 backends")
    began = before["observeStartedAt"]
    operator.stop(signal.SIGKILL)
    time.sleep(4)
    operator.start()
    status = wait_phase(kube, ns, "watch", timeout=120)["status"]
    assert status["phase"] == "Completed", status.get("message")
    target = status["target"]
    assert target["observeStartedAt"] == began  # the same watch, not a new one
    observation = target["observation"]
    assert observation["reads"] > before["observation"]["reads"]
    assert observation["appPeak"] == 2
    assert observation["durationSeconds"] >= 29  # from the first read to the watch's end
    times = [p["t"] for p in observation["series"]]
    assert times == sorted(times)
    assert times[0] <= before["observation"]["durationSeconds"] + 1
    (warning,) = [w for w in target["warnings"] if w.startswith("the operator restarted")]
    assert "into the watch: nothing was read from" in warning, warning
    assert any(
        e["reason"] == "Restarted" and "observing on to its end" in e["message"] for e in events(kube, ns, "watch")
    )
    assert target["answer"]["perPod"] == 2
    kube.delete(f"/api/v1/namespaces/{ns}")


def test_observe_sees_app_pods_the_server_refuses_crash(
    operator: Any, control_plane: Any, kube: Any, user_pg: str
) -> None:
    """A pod that wants 2 connections of a role limited to 1 is refused its second and crashes: the run's
    restarts and the last termination are in status."""
    ns = create_namespace(kube, "crash")
    monitor_secret(kube, ns)
    app_deployment(kube, ns, user_pg, replicas=0, conns=2, user="app_limited")
    apply_benchmark(control_plane, ns, own_app("watch", user_pg, "Observe", durationSeconds=20))
    wait_phase(kube, ns, "watch", phases=("Running",), timeout=60)
    kubectl(control_plane, "-n", ns, "scale", "deployment/my-app", "--replicas=1")
    status = wait_phase(kube, ns, "watch", timeout=120)["status"]
    assert status["phase"] == "Completed", status.get("message")
    health = status["target"]["podHealth"]
    assert len(health) == 1, health
    (pod,) = health.values()
    assert pod["restarts"] >= 1
    assert pod["lastTerminationReason"] == "Error"
    assert "too many connections for role" in pod["lastTerminationMessage"]
    assert status["failures"] == pod["restarts"]
    kube.delete(f"/api/v1/namespaces/{ns}")


#: A pod's address can outlive its pod (the stand-in kubelet reuses IPs): a connection whose peer vanished
#: without a reset must fail within seconds, not wait forever for a reply.
DEAD_PEER: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 2,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "tcp_user_timeout": 5000,
}


def app_backends(pg_host: str) -> int:
    """The app role's backends on the user's server; -1 when the server could not be read this time."""
    try:
        conn = psycopg2.connect(
            host=pg_host, user="postgres", password=SUPERUSER_PASSWORD, dbname="postgres", **DEAD_PEER
        )
    except psycopg2.OperationalError:
        return -1
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'")
            row = cur.fetchone()
            return int(row[0]) if row else 0
    except psycopg2.OperationalError:
        return -1
    finally:
        conn.close()


def test_a_step_stops_before_the_server_refuses(operator: Any, control_plane: Any, kube: Any, user_pg: str) -> None:
    """17 usable, 0.9 × 17 = 15.3: 2 pods of 4 connections pass, 4 pods (16) stop the step."""
    wait_for(lambda: app_backends(user_pg) == 0, 60, interval=1.0, what="no app connection left by other tests")
    ns = create_namespace(kube, "safety")
    monitor_secret(kube, ns)
    app_deployment(kube, ns, user_pg, replicas=1, conns=4)
    doc = own_app("steps", user_pg, "Step", steps=[2, 4, 5], holdSeconds=5)
    doc["spec"]["safety"] = {"stopAtUsedFraction": 0.9}
    apply_benchmark(control_plane, ns, doc)
    status = wait_phase(kube, ns, "steps", timeout=240)["status"]
    assert status["phase"] == "Completed", status.get("message")
    target = status["target"]
    assert [s["replicas"] for s in target["steps"]] == [2, 4]
    assert not target["steps"][0]["stopped"]
    stopped = target["steps"][1]
    assert stopped["stopped"] is True
    used = int(stopped["stopReason"].split()[2])
    assert used >= 16
    assert stopped["stopReason"] == f"stopped at {used} of 17 usable (0.9)"
    assert target["stoppedAtStep"] == 2
    assert f"step 2 stopped at {used} of 17 usable (0.9); no further steps" in status["message"]
    assert target["restored"] is True
    assert replicas(kube, ns) == 1
    assert any(e["reason"] == "SafetyStop" for e in events(kube, ns, "steps"))
    kube.delete(f"/api/v1/namespaces/{ns}")


def test_the_operator_may_scale_and_read_what_it_needs_and_nothing_more(installed: Any, control_plane: Any) -> None:
    sa = "system:serviceaccount:poolbench-system:poolbench-operator"

    def can(*args: str) -> bool:
        proc = kubectl(control_plane, "auth", "can-i", f"--as={sa}", *args, check=False)
        return proc.stdout.strip() == "yes"

    for granted in (
        ["get", "deployments", "-n", "team"],
        ["get", "deployments", "--subresource=scale", "-n", "team"],
        ["patch", "deployments", "--subresource=scale", "-n", "team"],
        ["get", "horizontalpodautoscalers.autoscaling", "-n", "team"],
        ["list", "horizontalpodautoscalers.autoscaling", "-n", "team"],
        ["get", "pods", "-n", "team"],
        ["list", "pods", "-n", "team"],
        ["watch", "pods", "-n", "team"],
        ["get", "secrets/pb-monitor", "-n", "team"],
        ["create", "jobs.batch", "-n", "team"],
        ["delete", "jobs.batch", "-n", "team"],
    ):
        assert can(*granted), granted
    for denied in (
        ["delete", "deployments", "--subresource=scale", "-n", "team"],
        ["update", "deployments", "--subresource=scale", "-n", "team"],
        ["update", "deployments", "-n", "team"],
        ["get", "secrets", "-n", "team"],
        ["get", "secrets/app-credentials", "-n", "team"],
        ["list", "secrets", "-n", "team"],
        ["watch", "secrets", "-n", "team"],
        ["create", "horizontalpodautoscalers.autoscaling", "-n", "team"],
        ["delete", "horizontalpodautoscalers.autoscaling", "-n", "team"],
        ["patch", "horizontalpodautoscalers.autoscaling", "-n", "team"],
        ["get", "jobs.batch", "-n", "team"],
        ["patch", "jobs.batch", "-n", "team"],
        ["create", "cronjobs.batch", "-n", "team"],
        ["patch", "statefulsets", "--subresource=scale", "-n", "team"],
    ):
        assert not can(*denied), denied
