"""Malformed PoolBenchmarks against the real API server and the operator.

Each is rejected by the API server's schema with a field path, or accepted and then ended by the
operator in phase Invalid with the field path in the message and a Warning event. Never an operator
crash: a valid resource applied afterwards still completes.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.harness.operator import create_namespace, kubectl
from tests.test_cli_input import MALFORMED

from .test_operator_e2e import apply_benchmark, benchmark, events, quick, wait_phase

pytestmark = pytest.mark.k8s

# The same corpus as the CLI's, less what is not a PoolBenchmark document at all (raw YAML text,
# another kind or apiVersion: those never reach this resource's schema).
CORPUS = [
    (doc, field)
    for doc, field in MALFORMED
    if isinstance(doc, dict)
    and doc.get("kind") == "PoolBenchmark"
    and doc.get("apiVersion") == "poolbench.dev/v1alpha1"
]
CORPUS += [
    (
        {**quick("absurd-interval"), "spec": {**quick("x")["spec"], "sampling": {"intervalMs": 10**9}}},
        "spec.sampling.intervalMs",
    ),
    ({**quick("many-steps"), "spec": {**quick("x")["spec"], "steps": list(range(1, 200))}}, "spec.steps"),
    (
        {**quick("nonascii-setting"), "spec": {**quick("x")["spec"], "postgres": {"settings": {"wörk_mem": "4MB"}}}},
        "spec.postgres.settings",
    ),
    (
        {
            **quick("forbidden-setting"),
            "spec": {**quick("x")["spec"], "postgres": {"settings": {"listen_addresses": "*"}}},
        },
        "spec.postgres.settings",
    ),
]


def test_bad_input_corpus_is_rejected_with_field_paths(operator: Any, control_plane: Any, kube: Any) -> None:
    assert len(CORPUS) >= 30
    ns = create_namespace(kube, "corpus")
    accepted = []
    for i, (doc, field) in enumerate(CORPUS):
        doc = yaml.safe_load(yaml.safe_dump(doc))
        if not doc["metadata"].get("name") or doc["metadata"]["name"] == "t":
            doc["metadata"]["name"] = f"bad-{i}"
        proc = kubectl(
            control_plane, "-n", ns, "apply", "-f", "-", input=yaml.safe_dump(doc, allow_unicode=True), check=False
        )
        if proc.returncode != 0:
            assert field.split("[")[0].split(".")[-1] in proc.stderr or field in proc.stderr, (field, proc.stderr)
            assert "Traceback" not in proc.stderr
        else:
            accepted.append((doc["metadata"]["name"], field))
    assert accepted, "some malformed specs must get past the schema (the operator's part)"
    for name, field in accepted:
        obj = wait_phase(kube, ns, name, timeout=90)
        assert obj["status"]["phase"] == "Invalid", (name, obj["status"])
        assert field in obj["status"]["message"], (field, obj["status"]["message"])
        assert any(e["type"] == "Warning" and e["reason"] == "Invalid" for e in events(kube, ns, name)), name
    assert operator.proc is not None, "the operator crashed"
    assert operator.proc.poll() is None, "the operator crashed"
    apply_benchmark(control_plane, ns, quick("still-serving", steps=[1]))
    assert wait_phase(kube, ns, "still-serving", timeout=180)["status"]["phase"] == "Completed"
    assert benchmark(kube, ns, "still-serving")["status"]["verdict"]["maxSafeReplicas"] == 1
    kube.delete(f"/api/v1/namespaces/{ns}")
