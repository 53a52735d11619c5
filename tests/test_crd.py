"""The CRD is generated from the spec model: the committed copies must match (no drift)."""

import yaml

from poolbench.core.crd import build_crd, crd_yaml
from poolbench.core.results import ALWAYS_WRITTEN
from tests.conftest import ROOT


def test_committed_crd_matches_the_model() -> None:
    committed = (ROOT / "manifests/crd.yaml").read_text()
    assert committed == crd_yaml(), "run: make crd"
    chart_copy = (ROOT / "charts/poolbench/crds/poolbenchmarks.yaml").read_text()
    assert chart_copy == committed, "run: make crd"


def test_schema_is_structural() -> None:
    text = crd_yaml()
    assert "$ref" not in text
    assert "anyOf" not in text
    assert "additionalProperties: false" not in text
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    # steps may be omitted only by an Observe target: the operator says so (phase Invalid with the path).
    assert "required" not in spec
    assert spec["properties"]["database"]["required"] == ["host", "monitorSecret"]
    assert spec["properties"]["target"]["properties"]["mode"]["enum"] == ["Observe", "Step"]
    # A list of counts or {search: {min, max}}: two shapes no structural schema can hold, so the API
    # server keeps the field as given and the operator validates it (phase Invalid with the path).
    assert spec["properties"]["steps"]["x-kubernetes-preserve-unknown-fields"] is True
    assert "type" not in spec["properties"]["steps"]
    assert spec["properties"]["rollout"]["properties"]["maxSurge"]["x-kubernetes-int-or-string"] is True
    engine = spec["properties"]["workload"]["properties"]["engine"]["properties"]
    assert engine["poolClass"]["enum"] == ["QueuePool", "NullPool", "StaticPool", "SingletonThreadPool"]
    status = schema["properties"]["status"]["properties"]
    for key in (
        "phase",
        "message",
        "currentStep",
        "totalSteps",
        "replicas",
        "maxConnections",
        "peakConnections",
        "failures",
        "variants",
        "verdict",
        "progress",
    ):
        assert key in status, key
    assert "steps" not in status  # a benchmark's steps are its variants', each written once
    variant = status["variants"]["items"]["properties"]
    assert {"name", "pooler", "engine", "steps", "verdict"} <= set(variant)
    step = variant["steps"]["items"]["properties"]
    for key in (
        "replicas",
        "startedAt",
        "finishedAt",
        "predictedPeak",
        "peakConnections",
        "peakByState",
        "idleAtEnd",
        "oldestIdleSeconds",
        "errors",
        "restarts",
        "outcome",
        "pooler",
    ):
        assert key in step, key
    assert set(step["pooler"]["properties"]) == {
        "predictedClientPeak",
        "clientCapacity",
        "serverCapacity",
        "predictedOutcome",
        "clientPeakConnections",
        "waitingPeak",
        "maxWaitMs",
        "sampleGaps",
    }
    assert step["pooler"]["nullable"] is True
    assert set(step["errors"]["properties"]) == {
        "tooManyClients",
        "reservedSlots",
        "poolTimeout",
        "other",
        "poolerMaxClientConn",
        "poolerServerLogin",
        "poolerQueryWaitTimeout",
        "preparedStatementClash",
    }
    assert yaml.safe_load(text)["spec"]["names"]["shortNames"] == ["pbench"]


def test_every_printer_column_counter_is_written_even_at_zero() -> None:
    printed = build_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    columns = {c["name"]: (c["type"], c["jsonPath"], c.get("priority")) for c in printed}
    counters = [path for kind, path, _ in columns.values() if kind == "integer" and path.count(".") == 2]
    assert counters
    for path in counters:
        assert path.removeprefix(".status.") in ALWAYS_WRITTEN, path
    # A few words: a `get -o wide` row fits a terminal.
    assert columns["Verdict"] == ("string", ".status.shortVerdict", 1)
