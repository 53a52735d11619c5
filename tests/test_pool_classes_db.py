"""Every accepted pool class against a real PostgreSQL, with worker processes: measured = predicted, or
the spec is refused with the reason (SingletonThreadPool with more threads than its pool_size closes
connections that other threads are using; StaticPool's threads may each open the one connection)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from poolbench.cli import main
from poolbench.core.budget import predict
from poolbench.core.spec import SpecError, parse_document
from poolbench.local import runner
from tests.conftest import make_doc

pytestmark = pytest.mark.postgres


def bench(
    name: str, *, threads: int, engine: dict[str, Any], processes: int = 2, driver: str = "psycopg2", replicas: int = 2
) -> dict[str, Any]:
    return make_doc(
        name=name,
        steps=[replicas],
        stepTimeoutSeconds=60,
        sampling={"intervalMs": 20},
        postgres={"maxConnections": 40},
        workload={
            "driver": driver,
            "threads": threads,
            "processes": processes,
            "iterations": 5,
            "holdSeconds": 1,
            "statement": "SELECT pg_sleep(0.1)",
            "engine": engine,
        },
    )


# (name, threads, engine, driver, per-replica peak, per-replica ghosts): 2 worker processes per replica.
CASES = [
    ("singleton", 4, {"poolClass": "SingletonThreadPool", "poolSize": 4}, "psycopg2", 8, 8),
    ("singleton-default", 5, {"poolClass": "SingletonThreadPool"}, "psycopg", 10, 10),
    ("static", 1, {"poolClass": "StaticPool"}, "psycopg2", 2, 2),
    ("static-pg3", 1, {"poolClass": "StaticPool"}, "psycopg", 2, 2),
    ("queue-size-0", 4, {"poolSize": 0}, "psycopg2", 8, 8),
    ("queue-no-cap", 4, {"poolSize": 2, "maxOverflow": -1}, "asyncpg", 8, 4),
]


@pytest.mark.parametrize(("name", "threads", "engine", "driver", "peak", "ghosts"), CASES, ids=[c[0] for c in CASES])
def test_measured_equals_predicted_for_each_pool_class(
    name: str, threads: int, engine: dict[str, Any], driver: str, peak: int, ghosts: int
) -> None:
    doc = bench(name, threads=threads, engine=engine, driver=driver)
    pred = predict(parse_document(doc).spec, 2)
    assert (pred.peak, pred.idle) == (2 * peak, 2 * ghosts)  # the arithmetic's answer, known in advance
    step = runner.run_local(parse_document(doc)).status.variants[0].steps[0]
    assert step.outcome == "Passed", step.reason
    assert step.errors.total() == 0
    assert step.queries == 2 * 2 * threads * 5
    assert step.peak_connections == step.predicted_peak == 2 * peak
    assert step.idle_at_end == step.predicted_idle == 2 * ghosts


REFUSED = [
    (
        {"threads": 6, "engine": {"poolClass": "SingletonThreadPool"}},
        None,
        "spec.workload.engine.poolSize",
        "spec.workload.threads (6) is more than poolSize (5, SQLAlchemy's default)",
    ),
    (
        {"threads": 4, "engine": {"poolClass": "SingletonThreadPool", "poolSize": 3}},
        None,
        "spec.workload.engine.poolSize",
        "spec.workload.threads (4) is more than poolSize (3)",
    ),
    (
        {"threads": 2, "engine": {"poolClass": "SingletonThreadPool", "poolSize": 0}},
        None,
        "spec.workload.engine.poolSize",
        "poolSize 0 leaves SingletonThreadPool no connection to keep",
    ),
    (
        {"threads": 4},
        [{"name": "a"}, {"name": "b", "engine": {"poolClass": "SingletonThreadPool", "poolSize": 2}}],
        "spec.variants[1].engine.poolSize",
        "spec.workload.threads (4) is more than poolSize (2)",
    ),
    (
        {"threads": 4, "engine": {"poolClass": "StaticPool"}},
        None,
        "spec.workload.engine.poolClass",
        "the 4 threads of spec.workload.threads starting together may each open one",
    ),
]


@pytest.mark.parametrize(("workload", "variants", "path", "text"), REFUSED, ids=[r[2] + r[3][-12:] for r in REFUSED])
def test_a_pool_class_its_threads_would_break_is_refused_with_the_reason(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    workload: dict[str, Any],
    variants: list[Any] | None,
    path: str,
    text: str,
) -> None:
    doc = make_doc(name="refused", steps=[1], workload=workload, **({"variants": variants} if variants else {}))
    with pytest.raises(SpecError) as info:
        parse_document(doc)
    reasons = dict(info.value.problems)
    assert text in reasons[path], reasons
    file = tmp_path / "refused.yaml"
    file.write_text(yaml.safe_dump(doc))
    assert main(["run", str(file)]) == 2
    err = capsys.readouterr().err
    assert path in err
    assert "Traceback" not in err


@pytest.mark.parametrize("driver", ["psycopg2", "asyncpg"])
def test_nullpool_with_worker_processes_opens_one_per_caller_and_keeps_none(driver: str) -> None:
    # 2 replicas × 2 processes × 4 callers: 16 at once, 0 kept. A closed connection's backend may still be
    # listed for a moment while its caller's next one connects (docs/concepts/measured.md: about one per
    # worker process).
    doc = bench(f"np-{driver}", threads=4, engine={"poolClass": "NullPool"}, driver=driver)
    step = runner.run_local(parse_document(doc)).status.variants[0].steps[0]
    assert step.outcome == "Passed", step.reason
    assert step.errors.total() == 0
    assert step.queries == 2 * 2 * 4 * 5
    assert step.predicted_peak == 16
    assert step.predicted_idle == 0 == step.idle_at_end
    assert 16 <= step.peak_connections <= 16 + 2 * 2
