"""Operator builders and pod-state logic (pure, no cluster)."""

import json

from poolbench.core.spec import parse_spec
from poolbench_operator.builders import (
    METRICS_PORT,
    TERMINATION_PATH,
    Names,
    build_children,
    postgres_args,
)
from poolbench_operator.podstate import Metrics, PodView, parse_metrics, reports, step_done, work_done

SPEC = parse_spec({"steps": [2, 8], "postgres": {"maxConnections": 30, "settings": {"work_mem": "4MB"}},
                   "workload": {"threads": 6, "role": "app", "engine": {"poolSize": 2, "maxOverflow": 3}}})


def children():
    return {c["kind"]: c for c in build_children("demo", SPEC, workload_image="img:1",
                                                 superuser_password="S3CRET", app_password="APPPW")}


def test_children_and_names():
    objs = children()
    assert set(objs) == {"Secret", "Service", "StatefulSet", "Deployment"}
    assert objs["StatefulSet"]["metadata"]["name"] == "demo-postgres" == Names("demo").postgres
    assert objs["Deployment"]["spec"]["replicas"] == 0
    assert objs["Secret"]["stringData"] == {"postgres-password": "S3CRET", "app-password": "APPPW"}


def test_limits_become_server_arguments():
    assert postgres_args(SPEC) == ["-c", "max_connections=30", "-c", "superuser_reserved_connections=3",
                                   "-c", "work_mem=4MB"]
    container = children()["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == postgres_args(SPEC)
    assert container["readinessProbe"]["exec"]["command"][0] == "pg_isready"


def test_password_only_by_reference():
    objs = children()
    for kind in ("StatefulSet", "Deployment", "Service"):
        assert "S3CRET" not in json.dumps(objs[kind]) and "APPPW" not in json.dumps(objs[kind])
    env = {e["name"]: e for e in objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "app-password"  # role app
    assert env["PGUSER"]["value"] == "poolbench_app"
    assert env["PGHOST"]["value"] == "demo-postgres"
    assert env["POOLBENCH_SUMMARY_PATH"]["value"] == TERMINATION_PATH
    assert env["POOLBENCH_METRICS_PORT"]["value"] == str(METRICS_PORT)
    assert env["POOLBENCH_APP_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POOLBENCH_EXIT_AFTER_HOLD"]["value"] == "false"


def test_every_pod_is_locked_down():
    for kind in ("StatefulSet", "Deployment"):
        pod = children()[kind]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"] and c["resources"]["limits"]


METRICS_TEXT = """# HELP poolbench_attempts_total Statements attempted, by outcome
# TYPE poolbench_attempts_total counter
poolbench_attempts_total{outcome="ok"} 42.0
poolbench_attempts_total{outcome="tooManyClients"} 2.0
# HELP poolbench_phase Replica phase
# TYPE poolbench_phase gauge
poolbench_phase{poolbench_phase="running"} 0.0
poolbench_phase{poolbench_phase="holding"} 1.0
"""


def test_parse_metrics():
    m = parse_metrics(METRICS_TEXT)
    assert m.phase == "holding" and m.outcomes == {"ok": 42, "tooManyClients": 2}


def test_step_progress_from_pods():
    holding = PodView("a", metrics=Metrics("holding", {"ok": 5}))
    done = PodView("b", metrics=Metrics("done", {"ok": 5}))
    crashed = PodView("c", restarts=1, last_message=json.dumps(
        {"phase": "crashed", "outcomes": {"ok": 1, "tooManyClients": 1},
         "firstError": "sorry, too many clients already", "firstErrorClass": "tooManyClients", "firstErrorAt": 1.0}))
    starting = PodView("d")
    assert not work_done([holding, starting], 2)
    assert work_done([holding, done, crashed], 3)
    assert not step_done([holding, done], 2)
    assert step_done([done, crashed], 2)
    assert not step_done([done], 2)  # a replica is missing
    out = {r.name: r for r in reports([done, crashed])}
    assert out["c"].crashed and out["c"].restarts == 1 and out["c"].outcomes["tooManyClients"] == 1
    assert out["c"].first_error_class == "tooManyClients"
    assert not out["b"].crashed and out["b"].outcomes == {"ok": 5}


def test_resume_from_status_keeps_finished_steps_and_drops_foreign_keys():
    from poolbench.core.benchmark import BenchmarkRun
    from poolbench.core.benchmark import status_from_resource as resume_status

    assert resume_status(None) is None and resume_status({"kopf": {}}) is None
    status = resume_status({"phase": "Running", "kopf": {"progress": {}}, "totalSteps": 2, "steps": [
        {"replicas": 2, "outcome": "Passed", "startedAt": "t0", "finishedAt": "t1"},
        {"replicas": 8, "startedAt": "t2"}]})
    run = BenchmarkRun(SPEC, status)
    planned = run.next_step()
    assert planned is not None and (planned.index, planned.replicas) == (2, 8)
    run.begin_step(planned)
    assert [(s.replicas, s.started_at) for s in run.status.steps][0] == (2, "t0")
    assert len(run.status.steps) == 2


def test_passwords_are_derived_per_benchmark_and_purpose():
    from poolbench_operator.credentials import derive_password

    key = b"k" * 32
    a = derive_password(key, "uid-1", "superuser")
    assert a == derive_password(key, "uid-1", "superuser")  # the same after an operator restart
    assert len(a) == 32 and a.replace("-", "").replace("_", "").isalnum()
    assert len({a, derive_password(key, "uid-2", "superuser"), derive_password(key, "uid-1", "app"),
                derive_password(b"x" * 32, "uid-1", "superuser")}) == 4
