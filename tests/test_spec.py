"""The spec model: defaults, contradictions and field paths (pure, fast)."""

from typing import Any

import pytest

from poolbench.core.spec import SpecError, load_text, parse_document, parse_spec
from tests.conftest import ROOT, make_doc


def problems(doc: Any) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_document(doc)
    return dict(info.value.problems)


def test_defaults_are_sqlalchemy_and_postgres_defaults() -> None:
    spec = parse_spec({"steps": [5, 10]})
    assert spec.postgres.max_connections == 100
    assert spec.postgres.superuser_reserved_connections == 3
    assert spec.workload.statement == "SELECT pg_sleep(0.05)"
    assert spec.workload.engine.pool_class == "QueuePool"
    assert spec.workload.engine.effective_pool_size() == 5
    assert spec.workload.engine.effective_max_overflow() == 10
    assert spec.sampling.interval_ms == 100
    assert spec.stop_on_failure is True
    assert spec.cleanup == "ScaleDown"


def test_seed_example_is_the_seed() -> None:
    bench = load_text((ROOT / "manifests/examples/seed.yaml").read_text())
    spec = bench.spec
    assert bench.name == "seed"
    assert spec.steps == [5, 10]
    assert spec.postgres.max_connections == 100
    assert (spec.workload.threads, spec.workload.role, spec.workload.on_error) == (15, "superuser", "crash")
    assert spec.workload.engine.pool_size is None
    assert spec.workload.engine.max_overflow is None


def test_every_example_validates() -> None:
    examples = sorted((ROOT / "manifests/examples").glob("*.yaml"))
    assert examples
    for path in examples:
        load_text(path.read_text())


def test_all_problems_in_one_message() -> None:
    found = problems(make_doc(steps=[], bogus=1, sampling={"intervalMs": 5}))
    assert set(found) == {"spec.steps", "spec.bogus", "spec.sampling.intervalMs"}
    assert found["spec.bogus"] == "unknown field"


def test_contradictions_are_named() -> None:
    found = problems(make_doc(workload={"engine": {"poolClass": "NullPool", "maxOverflow": 2}}))
    assert "maxOverflow" in found["spec.workload.engine"]
    found = problems(make_doc(workload={"iterations": 3, "durationSeconds": 1}))
    assert "not both" in found["spec.workload"]
    found = problems(make_doc(postgres={"maxConnections": 10, "superuserReservedConnections": 10}))
    assert "less than maxConnections" in found["spec.postgres"]


def test_settings_that_break_the_experiment_are_refused() -> None:
    found = problems(make_doc(postgres={"settings": {"max_connections": "5", "idle_session_timeout": "1s"}}))
    assert "max_connections" in found["spec.postgres.settings"]
    assert parse_spec({"steps": [1], "postgres": {"settings": {"idle_session_timeout": "1s"}}})


def test_step_paths_are_indexed() -> None:
    assert "spec.steps[1]" in problems(make_doc(steps=[1, 0]))


def test_strict_types_no_string_numbers() -> None:
    assert "spec.postgres.maxConnections" in problems(make_doc(postgres={"maxConnections": "100"}))
