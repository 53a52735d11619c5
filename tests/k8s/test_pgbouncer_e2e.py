"""spec.variants on the process-runner tier: a direct variant and a PgBouncer one, run
one after the other against the same PostgreSQL pod. The pooler pod runs the host's pgbouncer as
uid 998 with its configuration from the Secret volume (bind-mounted by the pod runner); the
operator samples its admin console by pod IP, as it reaches PostgreSQL.
"""

from __future__ import annotations

import base64
import signal
import time
from typing import Any

import psycopg2
import pytest

from tests.harness.kube import wait_for
from tests.harness.operator import create_namespace, kubectl

from .test_operator_e2e import apply_benchmark, benchmark, children, events, quick, wait_phase

pytestmark = pytest.mark.k8s

POOL = 2


def ab(name: str, steps: tuple[int, ...] = (3,)) -> dict[str, Any]:
    return quick(
        name,
        steps=list(steps),
        cleanup="ScaleDown",
        workload={
            "threads": 4,
            "iterations": 10,
            "holdSeconds": 1,
            "role": "app",
            "onError": "count",
            "statement": "SELECT pg_sleep(0.05)",
        },
        variants=[
            {"name": "direct"},
            {
                "name": "tx",
                "pooler": {
                    "type": "PgBouncer",
                    "poolMode": "transaction",
                    "defaultPoolSize": POOL,
                    "maxClientConn": 50,
                },
                "engine": {"poolClass": "NullPool"},
            },
        ],
    )


def sessions_opened_while_idle(kube: Any, ns: str, name: str, seconds: float) -> int:
    """Sessions the benchmark's PostgreSQL pod established over ``seconds`` with no workload running
    (``pg_stat_database.sessions``, beside this one): anything the pod's own checks open would be
    counted in a step's peak."""
    secret = kube.get(f"/api/v1/namespaces/{ns}/secrets/{name}-credentials")
    password = base64.b64decode(secret["data"]["postgres-password"]).decode()
    ip = kube.get(f"/api/v1/namespaces/{ns}/pods/{name}-postgres-0")["status"]["podIP"]
    conn = psycopg2.connect(host=ip, port=5432, user="postgres", password=password, dbname="postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SET stats_fetch_consistency = none")

            def sessions() -> int:
                cur.execute("SELECT pg_stat_force_next_flush()")
                time.sleep(1.0)  # another backend's counts reach shared memory when it flushes or exits
                cur.execute("SELECT sum(sessions)::int FROM pg_stat_database")
                row = cur.fetchone()
                assert row is not None
                return int(row[0])

            before = sessions()
            time.sleep(seconds)
            return sessions() - before
    finally:
        conn.close()


def test_direct_and_pgbouncer_variants_side_by_side(
    operator: Any, control_plane: Any, kube: Any, pod_runner: Any
) -> None:
    ns = create_namespace(kube, "pgb")
    doc = ab("ab")
    doc["spec"]["workload"]["onConnect"] = ["SET statement_timeout = '5s'"]  # lost and leaked in transaction mode
    apply_benchmark(control_plane, ns, doc)
    obj = wait_phase(kube, ns, "ab", timeout=300)
    status = obj["status"]
    assert status["phase"] == "Completed", (status.get("message"), operator.log()[-3000:])
    direct, tx = status["variants"]
    assert direct["name"] == "direct"
    assert tx["name"] == "tx"
    (d,) = direct["steps"]
    # A direct step has no pooler: null in the status written, so absent from the merge-patched resource.
    assert d["outcome"] == "Passed", d
    assert d.get("pooler") is None, d
    assert d["peakConnections"] == 12, d
    (t,) = tx["steps"]
    assert t["outcome"] == "Passed", t
    assert t["pooler"] is not None, t
    assert 0 < t["peakConnections"] <= POOL, t  # the server saw the pooler's connections only
    assert t["pooler"]["clientPeakConnections"] > POOL, t  # 12 NullPool clients at most, at the pooler
    assert t["pooler"]["sampleGaps"] == 0, t
    assert sum(t["errors"].values()) == 0, t
    # The operator probed the pooled variant through its PgBouncer pod before the load, as the CLI does.
    assert direct.get("compatibility") is None, direct
    found = tx["compatibility"]
    assert sorted(f["kind"] for f in found["findings"]) == ["sessionSettingLeaked", "sessionSettingLost"], found
    assert found["notes"] == [], found
    assert "2 incompatibilities" in status["comparison"], status
    assert "steps" not in status
    assert status["verdict"] == direct["verdict"]

    kids = children(kube, ns)
    assert sorted(kids["deployments"]) == ["ab--direct-workload", "ab--tx-pgbouncer", "ab--tx-workload"]
    assert sorted(kids["services"]) == ["ab--tx-pgbouncer", "ab-postgres"]
    assert sorted(kids["secrets"]) == ["ab--tx-pgbouncer", "ab-credentials"]
    assert kids["networkpolicies"] == ["ab-pgbouncer", "ab-postgres", "ab-workload"]
    # cleanup ScaleDown: the workloads and the pooler at 0, PostgreSQL kept
    for name in ("ab--direct-workload", "ab--tx-workload", "ab--tx-pgbouncer"):
        assert kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")["spec"]["replicas"] == 0, name
    wait_for(
        lambda: not kube.items(f"/api/v1/namespaces/{ns}/pods", labelSelector="app.kubernetes.io/component=pgbouncer"),
        60,
        interval=1.0,
        what="the pooler pods gone",
    )
    assert sessions_opened_while_idle(kube, ns, "ab", seconds=7) == 0  # readiness checks log in to nothing
    messages = [e["message"] for e in events(kube, ns, "ab")]
    assert any("through PgBouncer transaction" in m for m in messages), messages
    assert any("PgBouncer scaled to 0" in m for m in messages), messages
    # the pooler's Secret, Service and Deployment are owned by the benchmark like the rest
    kubectl(control_plane, "-n", ns, "delete", "poolbenchmark", "ab", "--timeout=90s")
    wait_for(lambda: not any(children(kube, ns).values()), 120, interval=1.0, what="children garbage-collected")
    kube.delete(f"/api/v1/namespaces/{ns}")


def test_operator_killed_during_the_pooled_variant_resumes_it(
    operator: Any, control_plane: Any, kube: Any, pod_runner: Any
) -> None:
    ns = create_namespace(kube, "pgbkill")
    apply_benchmark(control_plane, ns, ab("abk", steps=(2, 3)))

    def pooled_step_running() -> Any:
        status = benchmark(kube, ns, "abk").get("status") or {}
        variants = status.get("variants") or []
        steps = variants[1].get("steps") if len(variants) > 1 else []
        return (
            status.get("currentVariant") == "tx"
            and steps
            and (steps[-1].get("pooler") or {}).get("clientPeakConnections", 0) > 0
        )

    wait_for(pooled_step_running, 240, interval=0.3, what="load on tx's first step")
    before = benchmark(kube, ns, "abk")["status"]
    operator.stop(signal.SIGKILL)
    operator.start()
    status = wait_phase(kube, ns, "abk", timeout=300)["status"]
    assert status["phase"] == "Completed", (status.get("message"), operator.log()[-3000:])
    direct, tx = status["variants"]
    kept = [(s["replicas"], s["startedAt"], s["finishedAt"], s["outcome"]) for s in direct["steps"]]
    assert kept == [
        (s["replicas"], s["startedAt"], s["finishedAt"], s["outcome"]) for s in before["variants"][0]["steps"]
    ], (direct, before)  # finished before the kill: not redone
    assert [s["replicas"] for s in tx["steps"]] == [2, 3], tx
    assert all(s["outcome"] == "Passed" for s in tx["steps"]), tx
    for step in tx["steps"]:
        assert step["pooler"], step
        assert step["pooler"]["clientPeakConnections"] > 0, step
        assert 0 < step["peakConnections"] <= POOL, step
    kube.delete(f"/api/v1/namespaces/{ns}")
