"""spec.database and spec.target: the user's own app and server, and what they may not be combined with."""

from typing import Any

import pytest

from poolbench.core.spec import SpecError, load_text, parse_document
from tests.conftest import ROOT, make_doc

pytestmark = pytest.mark.unit

DATABASE = {"host": "pg-rw.db.svc", "dbname": "app", "monitorSecret": {"name": "pb-monitor"}}


def problems(doc: Any) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_document(doc)
    return dict(info.value.problems)


def own(**spec: Any) -> dict[str, Any]:
    doc = make_doc(**spec)
    doc["spec"].setdefault("database", DATABASE)
    return doc


def test_step_target_defaults() -> None:
    spec = parse_document(own(target={"deployment": "web", "mode": "Step"}, steps=[1, 2, 3])).spec
    assert spec.database is not None
    assert spec.target is not None
    assert (spec.database.port, spec.database.sslmode) == (5432, "prefer")
    assert (spec.database.monitor_secret.username_key, spec.database.monitor_secret.password_key) == (
        "username",
        "password",
    )
    assert (spec.target.hold_seconds, spec.target.match, spec.target.load) == (60, None, None)
    assert spec.safety.stop_at_used_fraction == 0.9
    assert spec.step_counts() == [1, 2, 3]


def test_observe_needs_no_steps_and_refuses_them() -> None:
    doc = own(target={"deployment": "web"})
    del doc["spec"]["steps"]
    spec = parse_document(doc).spec
    assert spec.target is not None
    assert spec.target.mode == "Observe"
    assert spec.step_counts() == []
    assert spec.describe_steps() == "no steps (observed)"
    assert "remove spec.steps" in problems(own(target={"deployment": "web"}))["spec.steps"]


def test_steps_stay_required_elsewhere() -> None:
    doc = make_doc()
    del doc["spec"]["steps"]
    assert problems(doc)["spec.steps"].startswith("required")
    step = own(target={"deployment": "web", "mode": "Step"})
    del step["spec"]["steps"]
    assert "spec.steps" in problems(step)


def test_database_and_target_come_together() -> None:
    assert (
        "spec.target needs spec.database"
        in problems(make_doc(target={"deployment": "web", "mode": "Step"}))["spec.database"]
    )
    assert "spec.database needs spec.target" in problems(make_doc(database=DATABASE))["spec.target"]


def test_built_in_parts_are_refused_beside_an_own_app() -> None:
    found = problems(
        own(
            target={"deployment": "web", "mode": "Step"},
            postgres={"maxConnections": 50},
            workload={"threads": 2},
            variants=[{"name": "a"}],
            rollout={"maxSurge": 1},
        )
    )
    for field in ("postgres", "workload", "variants", "rollout"):
        assert found[f"spec.{field}"].startswith("not with spec.database"), field
    search = problems(own(target={"deployment": "web", "mode": "Step"}, steps={"search": {"min": 1, "max": 4}}))
    assert "list the replica counts" in search["spec.steps"]


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"target": {"deployment": "Web_App", "mode": "Step"}}, "spec.target.deployment"),
        ({"target": {"deployment": "web", "mode": "Scale"}}, "spec.target.mode"),
        ({"target": {"deployment": "web", "mode": "Step", "match": {}}}, "spec.target.match"),
        (
            {"target": {"deployment": "web", "mode": "Step"}, "safety": {"stopAtUsedFraction": 1.5}},
            "spec.safety.stopAtUsedFraction",
        ),
        (
            {"target": {"deployment": "web", "mode": "Step"}, "safety": {"stopAtUsedFraction": 0}},
            "spec.safety.stopAtUsedFraction",
        ),
        ({"target": {"deployment": "web", "mode": "Step"}, "database": {**DATABASE, "port": 0}}, "spec.database.port"),
        (
            {"target": {"deployment": "web", "mode": "Step"}, "database": {**DATABASE, "sslmode": "on"}},
            "spec.database.sslmode",
        ),
        ({"target": {"deployment": "web", "mode": "Step"}, "database": {"host": "h"}}, "spec.database.monitorSecret"),
        (
            {"target": {"deployment": "web", "mode": "Step"}, "database": {**DATABASE, "host": "a b"}},
            "spec.database.host",
        ),
    ],
)
def test_bad_fields_are_named(change: dict[str, Any], path: str) -> None:
    assert path in problems(own(steps=[1], **change))


def test_examples_validate() -> None:
    step = load_text((ROOT / "manifests/examples/own-app-step.yaml").read_text()).spec
    assert step.target is not None
    assert step.target.mode == "Step"
    assert step.steps == [1, 2, 3]
    watch = load_text((ROOT / "manifests/examples/own-app-observe.yaml").read_text()).spec
    assert watch.target is not None
    assert watch.target.duration_seconds == 600
    assert watch.steps is None
