"""The user's own app against the user's own PostgreSQL on a real node (spec.database + spec.target).

The user's side is made by the tests (``own_app.py``): a PostgreSQL pod and Service, a Deployment
running ``pgbench`` with 4 connections per pod, another tenant holding 3 idle sessions under its own
role, and a PostgreSQL outside the cluster on the node's bridge address. The operator is the chart's,
running as a pod; it connects as the monitor role, scales the Deployment only in Step mode and puts
its replica count back. Every replica count asserted here is read back from the API server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.harness.cluster import GATEWAY, Cluster
from tests.harness.kube import Kube, wait_for
from tests.harness.operator import kubectl
from tests.harness.release import create_restricted_namespace, operator_pod, record
from tests.k8s.test_operator_e2e import GROUP_PATH, TERMINAL, benchmark, wait_phase

from .own_app import (
    APP_ROLE,
    CLIENTS_PER_POD,
    TENANT_APPLICATION,
    TENANT_CONNECTIONS,
    TENANT_ROLE,
    HostDatabase,
    UserDatabase,
    app_pods,
    app_restarts,
    app_settled,
    cluster_sql,
    create_app,
    create_cluster_database,
    create_tenant_pod,
    delete_app,
    deployment,
    host_tenant,
    start_host_database,
)

pytestmark = pytest.mark.node

TENANT_OWNER = {"usename": TENANT_ROLE, "applicationName": TENANT_APPLICATION, "peak": TENANT_CONNECTIONS}


# -- the user's side, made once for the module --------------------------------------------------------
@pytest.fixture(scope="module")
def user_ns(kube: Kube) -> Iterator[str]:
    """The user's namespace (PSA restricted): the database, the apps, the tenant and the benchmarks."""
    ns = create_restricted_namespace(kube, "own")
    yield ns
    kube.delete(f"/api/v1/namespaces/{ns}")


@pytest.fixture(scope="module")
def cluster_db(kube: Kube, user_ns: str) -> UserDatabase:
    return create_cluster_database(kube, user_ns, "userdb")


@pytest.fixture(scope="module")
def tenant_ip(kube: Kube, cluster_db: UserDatabase) -> str:
    """Another tenant of the in-cluster database: 3 idle sessions of role ``tenant`` from one pod."""
    return create_tenant_pod(kube, cluster_db, "tenant")


@pytest.fixture(scope="module")
def host_db(kube: Kube) -> Iterator[HostDatabase]:
    """A PostgreSQL outside the cluster, on the node's bridge address; its users in their own namespace."""
    ns = create_restricted_namespace(kube, "outside")
    server = start_host_database(kube, ns, "hostdb", max_connections=40)
    yield server
    server.stop()
    kube.delete(f"/api/v1/namespaces/{ns}")


@pytest.fixture(scope="module")
def small_host_db(kube: Kube) -> Iterator[HostDatabase]:
    """A small one: 17 connections, 3 for superusers, so 14 usable by a normal role."""
    ns = create_restricted_namespace(kube, "small")
    server = start_host_database(kube, ns, "smalldb", max_connections=17)
    yield server
    server.stop()
    kube.delete(f"/api/v1/namespaces/{ns}")


# -- reading the benchmark ------------------------------------------------------------------------------
def own_benchmark(name: str, db: UserDatabase, app: str, mode: str, **spec: Any) -> dict[str, Any]:
    target = {"deployment": app, "mode": mode, **spec.pop("target", {})}
    return {
        "apiVersion": "poolbench.dev/v1alpha1",
        "kind": "PoolBenchmark",
        "metadata": {"name": name},
        "spec": {"database": db.database_spec(), "target": target, **spec},
    }


def apply(cluster: Cluster, namespace: str, doc: dict[str, Any]) -> None:
    kubectl(cluster, "-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(doc))


def target_of(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    target: dict[str, Any] = (benchmark(kube, namespace, name).get("status") or {}).get("target") or {}
    return target


def replicas_now(kube: Kube, namespace: str, app: str) -> int:
    """The Deployment's replica count as the API server has it (its scale subresource)."""
    scale = kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{app}/scale")
    return int(scale["spec"].get("replicas") or 0)


def app_peaks(step: dict[str, Any]) -> dict[str, int]:
    """The pods that held app connections in a step (or a watch): name -> peak."""
    pods = step["observation"]["pods"] if "observation" in step else step["pods"]
    return {pod: peaks["peakConnections"] for pod, peaks in pods.items() if peaks["peakConnections"] > 0}


def summary(status: dict[str, Any]) -> str:
    """The run's status as quoted in the tier's report (no series: it is long)."""
    target = dict(status.get("target") or {})
    target.pop("replicasOverTime", None)
    for step in target.get("steps") or []:
        step.get("observation", {}).pop("series", None)
    if target.get("observation"):
        target["observation"].pop("series", None)
    shown = {k: status.get(k) for k in ("phase", "message", "database")} | {"target": target}
    return json.dumps(shown, indent=1)


def held_pods_per_step(kube: Kube, namespace: str, name: str, app: str, timeout: float) -> dict[int, set[str]]:
    """Follows a Step run to its end; for each step, the app's Ready pods while the step was holding
    (its pods all ready, not yet finished): what the step's per-pod peaks must name."""
    seen: dict[int, set[str]] = {}

    def finished() -> bool:
        status = benchmark(kube, namespace, name).get("status") or {}
        steps = (status.get("target") or {}).get("steps") or []
        if steps and steps[-1].get("ready") and not steps[-1].get("finishedAt"):
            ready = {
                p["metadata"]["name"]
                for p in kube.items(
                    f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"app.kubernetes.io/name={app}"
                )
                if not p["metadata"].get("deletionTimestamp")
                and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
            }
            seen.setdefault(len(steps), set()).update(ready)
        return status.get("phase") in TERMINAL

    wait_for(finished, timeout, interval=0.3, what=f"{name} to finish")
    return seen


def delete_benchmark(cluster: Cluster, namespace: str, name: str) -> None:
    kubectl(cluster, "-n", namespace, "delete", "poolbenchmark", name, "--timeout=120s")


# -- the tests --------------------------------------------------------------------------------------------
def client_rows(rows: list[Any]) -> list[tuple[str, str, int]]:
    return sorted((str(role), str(address), int(count)) for role, address, count in rows)


def settled_rows(rows: list[Any], expected: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """The rows once they equal ``expected``; before that an AssertionError naming them, which
    ``wait_for`` retries and reports if they never do."""
    found = client_rows(rows)
    if found != expected:
        raise AssertionError(f"server shows {found}, expected {expected}")
    return found


CLIENTS_QUERY = (
    "SELECT usename, host(client_addr), count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
    " AND pid <> pg_backend_pid() GROUP BY 1, 2"
)


def test_the_users_servers_see_each_pods_own_address(
    cluster: Cluster, kube: Kube, user_ns: str, cluster_db: UserDatabase, tenant_ip: str, host_db: HostDatabase
) -> None:
    """What attribution by pod IP rests on: neither pod-to-pod traffic nor pod-to-node traffic is
    masqueraded on the node's bridge, so a server in the cluster and one on the node's address both see
    each pod's own IP as client_addr. Sessions from this machine come from 127.0.0.1."""
    ns = user_ns
    create_app(kube, cluster, cluster_db, "probe", replicas=2)
    try:
        pods = [(APP_ROLE, ip, CLIENTS_PER_POD) for ip in app_pods(kube, ns, "probe").values()]
        expected = sorted([*pods, (TENANT_ROLE, tenant_ip, TENANT_CONNECTIONS)])
        # A pod is Ready once pgbench runs, a moment before its sessions have logged in (usename
        # still empty): wait for the server to show them all. A masqueraded address never matches.
        rows = wait_for(
            lambda: settled_rows(cluster_sql(cluster, ns, "userdb", CLIENTS_QUERY), expected),
            60,
            interval=0.5,
            what="the in-cluster server to show every pod's sessions",
        )
        record(cluster, "client backends of the in-cluster database (pod to pod)", "\n".join(map(str, rows)))
    finally:
        delete_app(kube, ns, "probe")
    ns = host_db.db.namespace
    create_app(kube, cluster, host_db.db, "probe-outside", replicas=1)
    try:
        (app_ip,) = app_pods(kube, ns, "probe-outside").values()
        expected = sorted([(APP_ROLE, app_ip, CLIENTS_PER_POD), (TENANT_ROLE, "127.0.0.1", TENANT_CONNECTIONS)])
        with host_tenant(host_db):
            rows = wait_for(
                lambda: settled_rows(host_db.sql(CLIENTS_QUERY), expected),
                60,
                interval=0.5,
                what="the server on the node's address to show the pod's sessions",
            )
        record(cluster, f"client backends of the database outside the cluster ({GATEWAY})", "\n".join(map(str, rows)))
    finally:
        delete_app(kube, ns, "probe-outside")


def test_step_through_one_two_three_replicas_of_the_users_app(
    cluster: Cluster, kube: Kube, helm_release: Any, user_ns: str, cluster_db: UserDatabase, tenant_ip: str
) -> None:
    """Steps 1, 2, 3 of a pgbench Deployment: the app's peak is 4 per pod, on the pods that ran the
    step; the tenant's 3 sessions are another tenant's, by role; the replica count the Deployment had
    is put back."""
    ns, app, name = user_ns, "shop", "shop-steps"
    create_app(kube, cluster, cluster_db, app, replicas=1)
    try:
        apply(cluster, ns, own_benchmark(name, cluster_db, app, "Step", target={"holdSeconds": 5}, steps=[1, 2, 3]))
        held = held_pods_per_step(kube, ns, name, app, timeout=420)
        status = benchmark(kube, ns, name)["status"]
        record(cluster, "status of a Step run through 1, 2, 3 replicas", summary(status))
        assert status["phase"] == "Completed", status.get("message")
        target = status["target"]
        steps = target["steps"]
        assert [s["replicas"] for s in steps] == [1, 2, 3], steps
        for number, step in enumerate(steps, start=1):
            observation = step["observation"]
            assert step["ready"] is True, step
            assert step["stopped"] is False, step
            assert observation["appPeak"] == CLIENTS_PER_POD * number, (number, observation)
            assert observation["perPodPeak"] == CLIENTS_PER_POD, (number, observation)
            assert observation["unplacedPeak"] == 0, (number, observation)
            peaks = app_peaks(step)
            assert set(peaks) == held[number], (number, peaks, held)
            assert set(peaks.values()) == {CLIENTS_PER_POD}, (number, peaks)
            assert observation["othersPeak"] == TENANT_CONNECTIONS, (number, observation)
            assert observation["othersPeakByOwner"] == [TENANT_OWNER], (number, observation)
        assert held[1] < held[2] < held[3]  # a step adds pods to the ones before it
        # The answer is the measured one: 4 per pod, 3 held by the other tenant, 97 usable.
        assert {k: target["answer"][k] for k in ("perPod", "others", "usable")} == {
            "perPod": CLIENTS_PER_POD,
            "others": TENANT_CONNECTIONS,
            "usable": 97,
        }, target["answer"]
        assert target["originalReplicas"] == 1
        assert target["restored"] is True, target.get("restoreMessage")
        assert replicas_now(kube, ns, app) == 1
        wait_for(lambda: app_settled(kube, ns, app, 1), 120, interval=0.5, what=f"{app} back at 1 pod")
        assert set(app_restarts(kube, ns, app).values()) == {0}  # no app pod was refused or crashed
        assert status["database"]["usableForNormalRole"] == 97  # 100 - 3 reserved for superusers
        delete_benchmark(cluster, ns, name)
        assert replicas_now(kube, ns, app) == 1
    finally:
        delete_app(kube, ns, app)


def test_observe_changes_nothing_and_sees_a_hand_scaled_replica(
    cluster: Cluster, kube: Kube, helm_release: Any, user_ns: str, cluster_db: UserDatabase, tenant_ip: str
) -> None:
    """Observe mode while the user scales the app from 1 to 2 by hand: the status follows the replica
    count and each pod's connections, and the Deployment is exactly as the user left it."""
    ns, app, name = user_ns, "watched", "watched-observe"
    create_app(kube, cluster, cluster_db, app, replicas=1)
    try:
        before = deployment(kube, ns, app)
        apply(cluster, ns, own_benchmark(name, cluster_db, app, "Observe", target={"durationSeconds": 40}))

        def observing_one_pod() -> bool:
            observation = target_of(kube, ns, name).get("observation") or {}
            return observation.get("appPeak") == CLIENTS_PER_POD

        wait_for(observing_one_pod, 180, interval=0.5, what="the watch to see the first pod's connections")
        (first,) = app_pods(kube, ns, app)
        kube.patch(
            f"/apis/apps/v1/namespaces/{ns}/deployments/{app}/scale",
            {"spec": {"replicas": 2}},
            content_type="application/merge-patch+json",
            query={"fieldManager": "by-hand"},
        )
        wait_for(lambda: app_settled(kube, ns, app, 2), 120, interval=0.5, what=f"{app} at 2 pods")
        pods = set(app_pods(kube, ns, app))
        obj = wait_phase(kube, ns, name, timeout=180)
        status = obj["status"]
        record(cluster, "status of an Observe run (the app scaled 1 -> 2 by hand)", summary(status))
        assert status["phase"] == "Completed", status.get("message")
        target = status["target"]
        observation = target["observation"]
        assert app_peaks(observation) == {pod: CLIENTS_PER_POD for pod in pods}, observation
        assert first in pods
        assert observation["appPeak"] == 2 * CLIENTS_PER_POD
        assert observation["othersPeakByOwner"] == [TENANT_OWNER], observation
        counts = [point["replicas"] for point in target["replicasOverTime"] if point.get("replicas") is not None]
        assert counts[0] == 1, counts
        assert counts[-1] == 2, counts
        assert counts == sorted(counts), counts
        assert target.get("originalReplicas") is None
        assert not target.get("steps")
        assert target["answer"]["perPod"] == CLIENTS_PER_POD, target["answer"]
        assert target["answer"]["others"] == TENANT_CONNECTIONS, target["answer"]

        after = deployment(kube, ns, app)
        # Nothing but the hand-made scale changed the Deployment: one generation, the replica count.
        assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
        assert after["metadata"].get("annotations", {}).keys() - {"deployment.kubernetes.io/revision"} == before[
            "metadata"
        ].get("annotations", {}).keys() - {"deployment.kubernetes.io/revision"}
        assert after["metadata"]["labels"] == before["metadata"]["labels"]
        assert {**after["spec"], "replicas": 1} == before["spec"]
        managers = {m["manager"] for m in after["metadata"].get("managedFields", [])}
        assert managers - {m["manager"] for m in before["metadata"].get("managedFields", [])} == {"by-hand"}, managers
        assert replicas_now(kube, ns, app) == 2
        delete_benchmark(cluster, ns, name)
        assert replicas_now(kube, ns, app) == 2  # the deletion puts nothing "back" either
    finally:
        delete_app(kube, ns, app)


def wait_holding_step(kube: Kube, namespace: str, name: str, app: str, step: int, replicas: int) -> None:
    """Until step ``step`` holds: the Deployment at ``replicas`` with every pod ready."""

    def holding() -> bool:
        steps = target_of(kube, namespace, name).get("steps") or []
        return (
            len(steps) == step
            and bool(steps[-1].get("ready"))
            and not steps[-1].get("finishedAt")
            and replicas_now(kube, namespace, app) == replicas
        )

    wait_for(holding, 300, interval=0.3, what=f"{name} holding step {step} at {replicas} replicas")


def test_deleting_the_benchmark_mid_step_puts_the_replicas_back(
    cluster: Cluster, kube: Kube, helm_release: Any, user_ns: str, cluster_db: UserDatabase, tenant_ip: str
) -> None:
    ns, app, name = user_ns, "deleted", "deleted-steps"
    create_app(kube, cluster, cluster_db, app, replicas=2)
    try:
        # One step held far longer than the test waits: it is mid-step whenever the deletion comes.
        apply(cluster, ns, own_benchmark(name, cluster_db, app, "Step", target={"holdSeconds": 3600}, steps=[3]))
        wait_holding_step(kube, ns, name, app, step=1, replicas=3)
        assert target_of(kube, ns, name)["originalReplicas"] == 2
        delete_benchmark(cluster, ns, name)  # returns once the resource is gone: its finalizer ran
        assert kube.get_or_none(f"{GROUP_PATH}/namespaces/{ns}/poolbenchmarks/{name}") is None
        assert replicas_now(kube, ns, app) == 2
        wait_for(lambda: app_settled(kube, ns, app, 2), 120, interval=0.5, what=f"{app} back at 2 pods")
    finally:
        delete_app(kube, ns, app)


def test_operator_killed_mid_step_puts_the_replicas_back(
    cluster: Cluster, kube: Kube, helm_release: Any, user_ns: str, cluster_db: UserDatabase, tenant_ip: str
) -> None:
    ns, app, name = user_ns, "orphaned", "orphaned-steps"
    create_app(kube, cluster, cluster_db, app, replicas=2)
    try:
        apply(cluster, ns, own_benchmark(name, cluster_db, app, "Step", target={"holdSeconds": 3600}, steps=[3]))
        wait_holding_step(kube, ns, name, app, step=1, replicas=3)
        old = operator_pod(kube)["metadata"]["name"]
        kubectl(cluster, "-n", "poolbench-system", "delete", "pod", old, "--grace-period=0", "--force")
        wait_for(
            lambda: operator_pod(kube)["metadata"]["name"] != old,
            120,
            what="a new operator pod",
        )
        obj = wait_phase(kube, ns, name, timeout=300)
        status = obj["status"]
        record(cluster, "status of a Step run whose operator was killed mid-step", summary(status))
        target = status["target"]
        # The new operator does not go on with a hold that was cut: it puts the replicas back and says so.
        assert status["phase"] == "Failed", status.get("message")
        assert "the operator restarted during step 1" in status["message"], status["message"]
        assert target["originalReplicas"] == 2  # the resumed run did not take the step's count for the user's
        (cut,) = target["steps"]  # what the step had measured before the kill is kept
        assert cut["replicas"] == 3, cut
        assert cut["observation"]["appPeak"] == 3 * CLIENTS_PER_POD, cut
        assert target["restored"] is True, target.get("restoreMessage")
        assert replicas_now(kube, ns, app) == 2
        wait_for(lambda: app_settled(kube, ns, app, 2), 120, interval=0.5, what=f"{app} back at 2 pods")
        delete_benchmark(cluster, ns, name)
        assert replicas_now(kube, ns, app) == 2
    finally:
        delete_app(kube, ns, app)


def test_a_database_outside_the_cluster(cluster: Cluster, kube: Kube, helm_release: Any, host_db: HostDatabase) -> None:
    """A PostgreSQL on the node's address, outside Kubernetes: the operator pod and the app pods reach
    it; two sessions of the app's role from this machine (a client that is not a pod, as behind a proxy)
    are the app's by ``target.match``; the tenant's sessions from this machine are another tenant's."""
    db = host_db.db
    ns, app, name = db.namespace, "outside", "outside-steps"
    create_app(kube, cluster, db, app, replicas=1)
    try:
        with host_tenant(host_db), host_tenant(host_db, count=2, role=APP_ROLE, application="proxy"):
            doc = own_benchmark(
                name, db, app, "Step", target={"holdSeconds": 5, "match": {"usename": APP_ROLE}}, steps=[1, 2]
            )
            apply(cluster, ns, doc)
            held = held_pods_per_step(kube, ns, name, app, timeout=300)
        status = benchmark(kube, ns, name)["status"]
        record(cluster, "status of a Step run against the database outside the cluster", summary(status))
        assert status["phase"] == "Completed", status.get("message")
        assert status["database"]["host"] == GATEWAY
        assert status["database"]["usableForNormalRole"] == 37
        steps = status["target"]["steps"]
        assert [s["replicas"] for s in steps] == [1, 2]
        for number, step in enumerate(steps, start=1):
            observation = step["observation"]
            assert app_peaks(step) == {pod: CLIENTS_PER_POD for pod in held[number]}, (number, observation)
            assert observation["unplacedPeak"] == 2, (number, observation)
            assert observation["appPeak"] == CLIENTS_PER_POD * number + 2, (number, observation)
            assert observation["othersPeakByOwner"] == [TENANT_OWNER], (number, observation)
        assert status["target"]["answer"]["others"] == TENANT_CONNECTIONS, status["target"]["answer"]
        assert status["target"]["restored"] is True
        assert replicas_now(kube, ns, app) == 1
        delete_benchmark(cluster, ns, name)
    finally:
        delete_app(kube, ns, app)


def test_stop_at_used_fraction_stops_before_the_server_refuses(
    cluster: Cluster, kube: Kube, helm_release: Any, small_host_db: HostDatabase
) -> None:
    """14 usable slots, 3 taken by another tenant, 4 per app pod: 1 pod uses 7 (0.5), 2 pods use 11
    (0.79), 3 pods would need 15 and be refused. With stopAtUsedFraction 0.7 step 2 is stopped, step 3
    never runs, the server refuses no one and the app's pods never crash; the replicas go back."""
    db = small_host_db.db
    ns, app, name = db.namespace, "small", "small-steps"
    create_app(kube, cluster, db, app, replicas=1)
    try:
        with host_tenant(small_host_db):
            doc = own_benchmark(
                name, db, app, "Step", target={"holdSeconds": 5}, steps=[1, 2, 3], safety={"stopAtUsedFraction": 0.7}
            )
            apply(cluster, ns, doc)
            obj = wait_phase(kube, ns, name, timeout=300)
        status = obj["status"]
        record(cluster, "status of a Step run stopped by stopAtUsedFraction", summary(status))
        target = status["target"]
        assert status["database"]["usableForNormalRole"] == 14
        assert target["stoppedAtStep"] == 2, target
        first, second = target["steps"]  # step 3 never ran
        assert first["stopped"] is False, first
        assert first["observation"]["appPeak"] == CLIENTS_PER_POD, first
        assert second["stopped"] is True, second
        used = second["observation"]["appPeak"] + second["observation"]["othersPeak"]
        assert 0.7 * 14 <= used <= 2 * CLIENTS_PER_POD + TENANT_CONNECTIONS, second
        assert "of 14 usable (0.7)" in second["stopReason"], second
        # The second pod's sessions are the app's, however early in the step the stop came: the other
        # tenant holds 3, and the answer is built on that.
        assert second["observation"]["othersPeakByOwner"] == [TENANT_OWNER], second["observation"]
        assert target["answer"]["perPod"] == CLIENTS_PER_POD, target["answer"]
        assert target["answer"]["others"] == TENANT_CONNECTIONS, target["answer"]
        assert "step 2 stopped at" in status["message"], status["message"]
        assert target["restored"] is True
        assert replicas_now(kube, ns, app) == 1
        log = small_host_db.log()
        assert "too many clients" not in log, log[-3000:]
        assert "remaining connection slots" not in log, log[-3000:]
        assert set(app_restarts(kube, ns, app).values()) == {0}
        assert not target.get("podHealth"), target["podHealth"]  # no app pod restarted, the removed ones included
        delete_benchmark(cluster, ns, name)
    finally:
        delete_app(kube, ns, app)
