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


# --- latency and checkout-wait histograms: the workload's own collector, read back by the operator ---


def _workload_metrics_text(measures) -> str:
    """What a replica serves, from the replica's real collector (no engine, no database)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from workload.replica import MeasuresCollector

    registry = CollectorRegistry()
    registry.register(MeasuresCollector(lambda: measures))
    return generate_latest(registry).decode()


def _measures():
    from poolbench.core.histogram import BOUNDS_MS, Histogram
    from workload.replica import Measures

    latency, wait = Histogram(), Histogram()
    # Every bound exactly (inclusive upper bounds), just above each, sub-bucket values and the +Inf bucket.
    for bound in BOUNDS_MS:
        latency.add(bound)
        latency.add(bound * 1.0001)
    for ms in (0.0, 0.01234, 3.3333333, 99.999999, 100.0, 100.0000001, 123456.789, 0.1):
        latency.add(ms)
        wait.add(ms / 7)
    wait.add(2.5)
    return Measures(latency, wait, 1764064198.123456, 1764064203.654321)


def test_histograms_round_trip_exactly_through_the_workload_metrics():
    m = _measures()
    text = _workload_metrics_text(m)
    assert 'poolbench_statement_latency_seconds_bucket{le="0.0001"}' in text
    assert 'poolbench_checkout_wait_seconds_bucket{le="+Inf"}' in text
    assert "poolbench_statement_latency_seconds_count" in text and "poolbench_checkout_wait_seconds_sum" in text
    parsed = parse_metrics(text)
    # The same counts per bucket, sum and max as the replica's summary carries (to_json: µs-rounded).
    assert parsed.latency.to_json() == m.latency.to_json()
    assert parsed.checkout_wait.to_json() == m.checkout_wait.to_json()
    assert parsed.latency.counts == m.latency.counts and parsed.latency.total == m.latency.total
    assert parsed.latency.counts[-1] == 2  # 60006 ms and 123456.789 ms: beyond the last bound
    assert parsed.work_started_at == m.work_started_at and parsed.work_ended_at == m.work_ended_at
    assert parsed.latency.percentile(0.5) == m.latency.percentile(0.5)


def test_histograms_before_any_work_are_empty_and_timestamps_unknown():
    from workload.replica import Measures

    parsed = parse_metrics(_workload_metrics_text(Measures()))
    assert parsed.latency.total == 0 and parsed.checkout_wait.total == 0
    assert parsed.work_started_at is None and parsed.work_ended_at is None
    old = parse_metrics(METRICS_TEXT)  # a replica without histograms: empty, not an error
    assert old.latency.total == 0 and old.work_started_at is None


def test_reports_merge_the_crashed_containers_histograms_with_the_running_ones():
    from poolbench.core.histogram import Histogram

    m = _measures()
    running = parse_metrics(_workload_metrics_text(m) + METRICS_TEXT)
    assert running.phase == "holding" and running.outcomes["ok"] == 42
    crashed_latency, crashed_wait = Histogram(), Histogram()
    crashed_latency.add(7.0)
    crashed_wait.add(30000.5)
    summary = {"phase": "crashed", "outcomes": {"ok": 1, "tooManyClients": 1}, "firstError": "sorry",
               "firstErrorClass": "tooManyClients", "latencyMs": crashed_latency.to_json(),
               "checkoutWaitMs": crashed_wait.to_json(), "workStartedAt": 1764064100.5, "workEndedAt": 1764064101.5}
    restarted = PodView("r", restarts=1, metrics=running, last_message=json.dumps(summary))
    fresh = PodView("f", metrics=running)
    out = {r.name: r for r in reports([restarted, fresh])}
    r = out["r"]
    assert r.outcomes == {"ok": 43, "tooManyClients": 3}
    assert r.latency.to_json() == Histogram().merge(crashed_latency).merge(m.latency).to_json()
    assert r.checkout_wait.total == m.checkout_wait.total + 1 and r.checkout_wait.max_ms == 30000.5
    assert (r.work_started_at, r.work_ended_at) == (1764064100.5, m.work_ended_at)
    f = out["f"]
    assert f.latency.to_json() == m.latency.to_json() and f.checkout_wait.to_json() == m.checkout_wait.to_json()
    assert (f.work_started_at, f.work_ended_at) == (m.work_started_at, m.work_ended_at)
    assert running.latency.to_json() == m.latency.to_json()  # the pod's metrics were not merged into
