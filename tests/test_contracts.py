"""The contracts between the platforms and a replica process: each side's writer read back by the other's reader.

Environment (render → parse), summary (write → read), metric names and phases (served by a real replica's
registry → read by the operator's parser), drivers (the spec's and the replica's lists are one), and the
replica's start-up path (no pydantic, no yaml).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from sqlalchemy import create_engine, pool

from poolbench.core.contracts import metrics
from poolbench.core.contracts.drivers import DRIVERS, EXTRA_MODULES, SQLALCHEMY_URLS, known_driver
from poolbench.core.contracts.phases import CRASHED, HOLDING, PHASES, WORK_OVER, known_phase
from poolbench.core.contracts.replica_env import (
    APP_NAME_ENV,
    ENGINE_ENV,
    EngineSettings,
    WorkloadConfig,
    WorkloadEnvError,
)
from poolbench.core.contracts.summary import SUMMARY_LIMIT, ReplicaSummary
from poolbench.core.histogram import Histogram, edges_with
from poolbench.core.spec import EngineSpec, PoolerSpec, SpecError, parse_spec
from poolbench.core.workload_env import workload_config, workload_env
from poolbench_operator.podstate import parse_metrics
from tests.conftest import ROOT
from workload.metrics import Measures, ReplicaMetrics
from workload.replica import Replica

FULL_ENGINE = EngineSettings(
    pool_class="QueuePool",
    pool_size=3,
    max_overflow=-1,
    pool_timeout=2.5,
    pool_recycle=600,
    pool_pre_ping=True,
    pool_use_lifo=False,
)
FULL_CONFIG = WorkloadConfig(
    threads=7,
    statement="SELECT '%s', ':x', 'é'",
    processes=2,
    driver="psycopg",
    iterations=None,
    duration_seconds=1.5,
    hold_seconds=0.25,
    on_error="crash",
    engine=FULL_ENGINE,
    app_name="bench-r0",
    metrics_port=9187,
    summary_path="/dev/termination-log",
    exit_after_hold=False,
    pooler="PgBouncer",
    pool_mode="transaction",
    histogram_edges_ms=(0.5, 60.0),
    pooler_hosts=(("127.0.0.1", 6432), ("::1", 6433)),
)


# --- the environment ----------------------------------------------------------------------------


def test_every_setting_of_a_replica_survives_its_environment() -> None:
    env = FULL_CONFIG.to_env()
    assert all(isinstance(v, str) for v in env.values())
    assert WorkloadConfig.from_env(env) == FULL_CONFIG
    assert WorkloadConfig.from_env(env).transaction_pooled


engines = st.builds(
    EngineSettings,
    pool_class=st.sampled_from(["QueuePool", "NullPool", "StaticPool", "SingletonThreadPool"]),
    pool_size=st.none() | st.integers(0, 1000),
    max_overflow=st.none() | st.integers(-1, 1000),
    pool_timeout=st.none() | st.floats(0, 3600),
    pool_recycle=st.none() | st.integers(-1, 86400),
    pool_pre_ping=st.none() | st.booleans(),
    pool_use_lifo=st.none() | st.booleans(),
)
configs = st.builds(
    WorkloadConfig,
    threads=st.integers(1, 500),
    statement=st.text(st.characters(blacklist_characters="\x00"), min_size=1),
    processes=st.integers(1, 64),
    driver=st.sampled_from(DRIVERS),
    iterations=st.none() | st.integers(1, 10**7),
    duration_seconds=st.none() | st.floats(0.001, 86400),
    hold_seconds=st.floats(0, 86400),
    on_error=st.sampled_from(["crash", "count"]),
    engine=engines,
    app_name=st.text(st.characters(blacklist_characters="\x00"), min_size=1),
    metrics_port=st.integers(0, 65535),
    summary_path=st.none() | st.text("abc/._", min_size=1),
    exit_after_hold=st.booleans(),
    pooler=st.none() | st.just("PgBouncer"),
    pool_mode=st.none() | st.sampled_from(["session", "transaction"]),
    histogram_edges_ms=st.lists(st.floats(0.001, 1e6), max_size=3).map(lambda v: tuple(sorted(set(v)))),
    pooler_hosts=st.lists(
        st.tuples(st.sampled_from(["127.0.0.1", "::1", "pgb"]), st.integers(1, 65535)), max_size=3
    ).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(configs)
def test_any_config_reads_back_as_rendered(config: WorkloadConfig) -> None:
    assert WorkloadConfig.from_env(config.to_env()) == config


def test_the_engine_settings_are_the_specs_engine_under_its_own_names() -> None:
    """A field added to or renamed in the spec's engine must reach the replica: the same fields, and the
    variable carries the spec's own camelCase JSON."""
    assert [f.name for f in dataclasses.fields(EngineSettings)] == list(EngineSpec.model_fields)
    spec = parse_spec(
        {
            "steps": [1],
            "workload": {
                "engine": {
                    "poolSize": 3,
                    "maxOverflow": 0,
                    "poolTimeout": 2,
                    "poolRecycle": 60,
                    "poolPrePing": True,
                    "poolUseLifo": True,
                }
            },
        }
    )
    env = workload_env(spec)
    assert env[ENGINE_ENV] == json.dumps(
        spec.workload.engine.model_dump(by_alias=True, exclude_none=True), sort_keys=True
    )
    named = WorkloadConfig.from_env(env | {APP_NAME_ENV: "bench-r0"})  # the platform names each replica
    assert named == dataclasses.replace(workload_config(spec), app_name="bench-r0")


def test_a_variants_pooler_and_the_limits_reach_the_environment() -> None:
    spec = parse_spec({"steps": [1], "limits": {"maxLatencyP95Ms": 60}, "workload": {"durationSeconds": 2}})
    pooled = WorkloadConfig.from_env(
        workload_env(spec, pooler=PoolerSpec(pool_mode="transaction"), exit_after_hold=False)
    )
    assert (pooled.pooler, pooled.pool_mode, pooled.transaction_pooled) == ("PgBouncer", "transaction", True)
    assert pooled.histogram_edges_ms == (60.0,)
    assert pooled.duration_seconds == 2.0
    assert pooled.iterations is None
    assert not pooled.exit_after_hold
    direct = WorkloadConfig.from_env(workload_env(spec))
    assert (direct.pooler, direct.pool_mode, direct.pooled) == (None, None, False)


def test_the_engine_settings_are_create_engine_arguments() -> None:
    engine = create_engine(
        SQLALCHEMY_URLS["psycopg2"], poolclass=getattr(pool, FULL_ENGINE.pool_class), **FULL_ENGINE.pool_arguments()
    )
    try:
        assert isinstance(engine.pool, pool.QueuePool)
        assert (engine.pool.size(), engine.pool.timeout()) == (3, 2.5)
    finally:
        engine.dispose()
    assert EngineSettings().pool_arguments() == {}


@pytest.mark.parametrize(
    ("engine", "named"),
    [
        ('{"poolsize": 3}', "'poolsize' is not one of poolClass, poolSize"),
        ('{"poolSize": "3"}', "poolSize '3' is not"),
        ('{"poolSize": true}', "poolSize True is not"),
        ('{"poolPrePing": 1}', "poolPrePing 1 is not"),
        ('{"poolClass": "AssertionPool"}', "poolClass 'AssertionPool' is not"),
        ("[]", "is not a JSON object"),
    ],
)
def test_a_malformed_engine_is_named(engine: str, named: str) -> None:
    with pytest.raises(WorkloadEnvError, match=f"POOLBENCH_ENGINE is malformed: .*{named}"):
        WorkloadConfig.from_env({ENGINE_ENV: engine})


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"POOLBENCH_DRIVER": "pg8000"}, "POOLBENCH_DRIVER is malformed: 'pg8000' is not one of psycopg2, psycopg"),
        ({"POOLBENCH_ON_ERROR": "retry"}, "POOLBENCH_ON_ERROR is malformed: 'retry' is not one of crash, count"),
        ({"POOLBENCH_POOL_MODE": "statement"}, "POOLBENCH_POOL_MODE is malformed: 'statement'"),
        ({"POOLBENCH_HISTOGRAM_EDGES_MS": "0"}, "POOLBENCH_HISTOGRAM_EDGES_MS is malformed"),
    ],
)
def test_a_malformed_setting_is_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(WorkloadEnvError, match=named):
        WorkloadConfig.from_env(env)


def test_an_unset_environment_gives_the_replicas_defaults() -> None:
    cfg = WorkloadConfig.from_env({"HOSTNAME": "pod-7"})
    assert dataclasses.replace(cfg, app_name="") == WorkloadConfig()
    assert cfg.app_name == "pod-7"
    assert WorkloadConfig.from_env({}).app_name == "poolbench-replica"


# --- the summary --------------------------------------------------------------------------------


def _histogram(*values: float) -> Histogram:
    h = Histogram(edges_with([60.0]))
    for v in values:
        h.add(v)
    return h


FULL_SUMMARY = ReplicaSummary(
    replica="bench-r0",
    phase=CRASHED,
    outcomes={"ok": 41, "tooManyClients": 2},
    first_error="FATAL: sorry, too many",
    first_error_class="tooManyClients",
    first_error_at=1764064198.25,
    peak_checked_out=7,
    started_at="2026-01-01T00:00:00.000+00:00",
    work_done_at="2026-01-01T00:00:01.000+00:00",
    finished_at="2026-01-01T00:00:02.000+00:00",
    latency=_histogram(0.5, 3.25, 70.0),
    checkout_wait=_histogram(0.001, 12.0),
    work_started_at=1764064197.5,
    work_ended_at=1764064199.75,
    processes=3,
)


@pytest.mark.parametrize("summary", [FULL_SUMMARY, dataclasses.replace(FULL_SUMMARY, processes=None), ReplicaSummary()])
def test_a_summary_reads_back_as_written(summary: ReplicaSummary) -> None:
    text = summary.to_text()
    assert len(text) <= SUMMARY_LIMIT
    assert ReplicaSummary.parse(text) == summary
    assert ("processes" in json.loads(text)) == (summary.processes is not None)


@pytest.mark.parametrize("text", [None, "", "{", "[1, 2]", '"holding"', "null"])
def test_a_message_that_is_no_summary_reads_as_none(text: str | None) -> None:
    assert ReplicaSummary.parse(text) is None


def test_a_summary_reader_keeps_what_it_can_of_a_malformed_message() -> None:
    read = ReplicaSummary.from_json(
        {
            "phase": "exploded",
            "outcomes": {"ok": 3, "other": "many", "tooManyClients": 1.0},
            "firstError": 7,
            "firstErrorAt": "soon",
            "peakCheckedOut": True,
            "latencyMs": [1],
            "checkoutWaitMs": {"buckets": "x"},
            "workStartedAt": 12,
            "workEndedAt": None,
            "processes": "2",
        }
    )
    assert read == ReplicaSummary(outcomes={"ok": 3, "tooManyClients": 1}, work_started_at=12.0)
    assert read.phase is None
    assert read.first_error is None
    assert read.latency.total == 0


# --- metric names and phases: a real replica's registry, read back by the operator ----------------


def test_a_replicas_metrics_read_back_by_the_operator() -> None:
    outcomes = {"ok": 5, "tooManyClients": 2}
    measures = Measures(_histogram(1.0, 2.0), _histogram(0.5), 1764064198.5, 1764064199.5)
    served = ReplicaMetrics(lambda: outcomes, lambda: measures)
    for phase in PHASES:
        served.set_phase(phase)
        read = parse_metrics(generate_latest(served.registry).decode())
        assert read.phase == phase
    assert {k: v for k, v in read.outcomes.items() if v} == outcomes
    assert read.latency.to_json() == measures.latency.to_json()
    assert read.checkout_wait.to_json() == measures.checkout_wait.to_json()
    assert (read.work_started_at, read.work_ended_at) == (measures.work_started_at, measures.work_ended_at)


def test_a_replica_serves_every_metric_the_contract_names() -> None:
    replica = Replica(WorkloadConfig(app_name="names-r0"))  # an engine that never connects here
    try:
        served = {s.name for family in replica.registry.collect() for s in family.samples}
    finally:
        replica.engine.dispose()
    names = [v for k, v in vars(metrics).items() if k.isupper() and v.startswith("poolbench_")]
    assert len(names) == 17
    for name in names:
        if name == metrics.ATTEMPTS:
            continue  # served as ATTEMPTS_TOTAL
        if name in (metrics.POOL_CONNECTS, metrics.POOL_CLOSES):
            assert name + metrics.TOTAL in served, name  # counters are served with _total
            continue
        wanted = name + metrics.BUCKET if name in (metrics.STATEMENT_LATENCY, metrics.CHECKOUT_WAIT) else name
        assert wanted in served, name


def test_phases_are_ordered_and_read_strictly() -> None:
    assert PHASES == ("starting", "running", "holding", "done", "crashed")
    assert set(WORK_OVER) <= set(PHASES)
    assert HOLDING in WORK_OVER
    assert known_phase("holding") == HOLDING
    assert known_phase("Holding") is None
    assert known_phase(None) is None


# --- drivers ------------------------------------------------------------------------------------


def test_the_spec_and_the_replica_know_the_same_drivers() -> None:
    assert set(SQLALCHEMY_URLS) == set(EXTRA_MODULES) == set(DRIVERS)
    for driver in DRIVERS:
        spec = parse_spec({"steps": [1], "workload": {"driver": driver}})
        assert known_driver(spec.workload.driver) == driver
        assert WorkloadConfig.from_env(workload_env(spec)).driver == driver
    with pytest.raises(SpecError, match="driver"):
        parse_spec({"steps": [1], "workload": {"driver": "pg8000"}})


# --- the start-up path --------------------------------------------------------------------------


def test_a_replica_starts_without_pydantic_or_yaml() -> None:
    """What ``python -m workload`` imports before it reads its environment (package __init__ files
    included, which import-linter does not follow)."""
    code = (
        "import sys, workload.__main__, workload.processes; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'yaml')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
