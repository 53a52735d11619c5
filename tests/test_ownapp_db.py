"""The operator's own-app driver against a real PostgreSQL, the cluster faked (its API objects are the
client's own models): the monitor's login from the Secret, the role check naming its GRANT, a wrong
password that shows nowhere, and an Observe run attributing real backends to the "pod" they come from."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import kubernetes.client as k8s
import psycopg2
import pytest

from poolbench.core.benchmark import full_status
from poolbench.core.spec import parse_spec
from poolbench.db.roles import ensure_role
from poolbench.local.embedded import LocalPostgres
from poolbench_operator.config import Config
from poolbench_operator.ownapp import OwnAppDriver

pytestmark = pytest.mark.postgres

PASSWORD = "Own-App-S3cret-pw"
MAX_CONNECTIONS = 30


@pytest.fixture(scope="module")
def pg() -> Iterator[LocalPostgres]:
    server = LocalPostgres(max_connections=MAX_CONNECTIONS, superuser_reserved_connections=3).start()
    try:

        def connect(**extra: object) -> Any:
            return psycopg2.connect(**{**server.connect_kwargs(), **extra}, connect_timeout=5)

        for role in ("pb_monitor", "pb_blind", "app"):
            ensure_role(connect, role, PASSWORD)
        admin = connect()
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("GRANT pg_monitor TO pb_monitor")
        admin.close()
        hba = server.data_dir / "pg_hba.conf"
        hba.write_text("host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        admin = connect()
        with admin.cursor() as cur:
            cur.execute("SELECT pg_reload_conf()")
        admin.close()
        time.sleep(0.5)
        yield server
    finally:
        server.stop()


class NeverStopped:
    def wait(self, timeout: float | None = None) -> bool:
        if timeout:
            time.sleep(timeout)
        return False


def merged_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged_patch(out[key], value)
        else:
            out[key] = value
    return out


class FakeKube:
    """The cluster: one Deployment ``my-app`` whose one pod has the IP the local server sees (127.0.0.1)."""

    namespace = "team"

    def __init__(self, username: str, password: str):
        self.login = {"username": username, "password": password}
        self.statuses: list[dict[str, Any]] = []
        self.status: dict[str, Any] = {}
        self.replicas = 1

    def secret_values(self, name: str, *keys: str) -> list[str | None]:
        return [self.login.get(k) for k in keys]

    def deployment(self, name: str) -> Any:
        return k8s.V1Deployment(
            metadata=k8s.V1ObjectMeta(name=name, annotations={}, labels={}),
            spec=k8s.V1DeploymentSpec(
                replicas=self.replicas,
                selector=k8s.V1LabelSelector(match_labels={"app": "my-app"}),
                template=k8s.V1PodTemplateSpec(),
                strategy=k8s.V1DeploymentStrategy(
                    type="RollingUpdate", rolling_update=k8s.V1RollingUpdateDeployment(max_surge=1)
                ),
            ),
        )

    def autoscalers_of(self, deployment: str) -> list[tuple[str, int]]:
        return []

    def deployment_replicas(self, name: str) -> int:
        return self.replicas

    def pods_matching(self, selector: str) -> list[Any]:
        assert selector == "app=my-app"
        return [
            k8s.V1Pod(
                metadata=k8s.V1ObjectMeta(name="my-app-0"),
                status=k8s.V1PodStatus(
                    pod_ip="127.0.0.1", conditions=[k8s.V1PodCondition(type="Ready", status="True")]
                ),
            )
        ]

    def patch_status(self, name: str, status: dict[str, Any]) -> None:
        """The API server's JSON merge patch (RFC 7386) of the status; each status kept as a reader reads it."""
        self.status = merged_patch(self.status, json.loads(json.dumps(status)))
        self.statuses.append(full_status(self.status))


def run_driver(pg: LocalPostgres, kube: FakeKube, **target: Any) -> tuple[OwnAppDriver, list[tuple[str, str, str]]]:
    spec = parse_spec(
        {
            "database": {
                "host": pg.host,
                "port": pg.port,
                "dbname": "postgres",
                "sslmode": "disable",
                "monitorSecret": {"name": "pb-monitor"},
            },
            "target": {"deployment": "my-app", **target},
            "sampling": {"intervalMs": 100},
        }
    )
    events: list[tuple[str, str, str]] = []
    driver = OwnAppDriver(
        kube=kube,  # type: ignore[arg-type]
        body={"metadata": {"name": "watch", "uid": "u1", "generation": 1}},
        spec=spec,
        stopped=NeverStopped(),
        adopt=lambda child: None,
        event=lambda kind, reason, message: events.append((kind, reason, message)),
        logger=logging.getLogger("test"),
        config=Config(poll_ms=200),
    )
    driver.execute()
    return driver, events


def test_a_wrong_password_fails_the_benchmark_without_showing_it(pg: LocalPostgres) -> None:
    wrong = "Wrong-Pw-4c0ffee"
    kube = FakeKube("pb_monitor", wrong)
    _, events = run_driver(pg, kube, mode="Observe", durationSeconds=5)
    last = kube.statuses[-1]
    assert last["phase"] == "Failed"
    assert f"cannot connect to {pg.host}:{pg.port} as pb_monitor" in last["message"]
    assert "password authentication failed" in last["message"]
    text = json.dumps(kube.statuses) + json.dumps(events)
    assert wrong not in text


def test_a_role_without_pg_monitor_fails_with_the_grant(pg: LocalPostgres) -> None:
    kube = FakeKube("pb_blind", PASSWORD)
    _, events = run_driver(pg, kube, mode="Observe", durationSeconds=5)
    last = kube.statuses[-1]
    assert last["phase"] == "Failed"
    assert 'GRANT pg_monitor TO "pb_blind";' in last["message"]
    assert any(reason == "Refused" and "GRANT pg_monitor" in message for _, reason, message in events)
    assert PASSWORD not in json.dumps(kube.statuses) + json.dumps(events)


def test_observe_reads_the_limits_live_and_attributes_backends_to_their_pod(pg: LocalPostgres) -> None:
    held = [
        psycopg2.connect(**pg.connect_kwargs("app"), password=PASSWORD, application_name="my-app") for _ in range(3)
    ]
    try:
        kube = FakeKube("pb_monitor", PASSWORD)
        _, events = run_driver(pg, kube, mode="Observe", durationSeconds=5)
    finally:
        for conn in held:
            conn.close()
    last = kube.statuses[-1]
    assert last["phase"] == "Completed", last["message"]
    database = last["database"]
    assert database["maxConnections"] == MAX_CONNECTIONS
    assert database["superuserReservedConnections"] == 3
    assert database["usableForNormalRole"] == MAX_CONNECTIONS - 3 - database["reservedConnections"]
    assert database["monitorRole"] == "pb_monitor"
    observation = last["target"]["observation"]
    assert observation["pods"]["my-app-0"]["peakConnections"] == 3  # every backend from 127.0.0.1: the pod's
    assert observation["perPodPeak"] == 3
    assert observation["reads"] >= 10
    answer = last["target"]["answer"]
    assert answer["perPod"] == 3
    assert answer["maxSurge"] == 1
    assert last["target"]["maxSurge"] == 1
    assert answer["replicas"] == 1
    assert last["verdict"]["summary"] == last["target"]["answerWords"]
    assert last["maxConnections"] == MAX_CONNECTIONS
    assert last["peakConnections"] == 3
    assert any(s["phase"] == "Running" for s in kube.statuses)
    assert PASSWORD not in json.dumps(kube.statuses) + json.dumps(events)
