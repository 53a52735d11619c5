"""How GitOps tools read a PoolBenchmark: the real kstatus library (``hack/kstatus``, built from Go modules
by hack/build-kstatus.sh) over objects read back from a real API server, their status written by the
operator's own status patch from the core's own status code; and the `kubectl wait` recipes of the page.

Each case's expected kstatus result is docs/guides/gitops.md's table (``status_cases.gitops_table``).
"""

from __future__ import annotations

import json
from typing import Any

import kubernetes
import pytest
import yaml

from poolbench.core.crd import SPEC_IMMUTABLE
from poolbench.core.spec import API_GROUP, API_VERSION, KIND, PLURAL
from poolbench_operator.kube import Kube as OperatorKube
from tests.harness.kube import JSON_PATCH, MERGE, Kube, KubeError
from tests.harness.operator import kubectl
from tests.harness.status_cases import (
    API_CASES,
    CLI_CASES,
    CORE_CASES,
    PAGE,
    core_status,
    gitops_table,
    kstatus,
    spec_of,
)

# The statuses here are written by the tests alone (the tier's operator is stopped meanwhile).
pytestmark = [pytest.mark.k8s, pytest.mark.usefixtures("own_statuses")]


def resource_path(ns: str, name: str = "") -> str:
    return f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{ns}/{PLURAL}" + (f"/{name}" if name else "")


def create(kube: Kube, ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "metadata": {"name": name}, "spec": spec}
    created: dict[str, Any] = kube.create(resource_path(ns), body)
    return created


@pytest.fixture
def operator_kube(installed: Any, namespace: str) -> OperatorKube:
    """The operator's own client (its status patch is the one under test), on this control plane."""
    kubernetes.config.load_kube_config(config_file=str(installed.kubeconfig))
    return OperatorKube(namespace)


def finished_with_status(kube: Kube, operator_kube: OperatorKube, ns: str, name: str, case: str) -> dict[str, Any]:
    """A resource created with the case's spec, its status written as the operator writes it, read back."""
    created = create(kube, ns, name, spec_of(case))
    operator_kube.patch_status(name, core_status(case, created["metadata"]["generation"]).to_json())
    obj: dict[str, Any] = kube.get(resource_path(ns, name))
    return obj


def test_kstatus_reads_each_case_as_the_page_says(
    installed: Any, kube: Kube, namespace: str, operator_kube: OperatorKube
) -> None:
    table = gitops_table()
    assert set(table) == {*CORE_CASES, *API_CASES, *CLI_CASES}, "the page's table and the tested cases differ"
    objects = [finished_with_status(kube, operator_kube, namespace, case, case) for case in CORE_CASES]
    for obj in objects:  # every observedGeneration is the integer the server counted, none is null
        generation = obj["metadata"]["generation"]
        assert obj["status"]["observedGeneration"] == generation
        assert [c["observedGeneration"] for c in obj["status"]["conditions"]] == [generation] * 3

    # spec-edited: the API server refuses the edit with the CRD's message; nothing changes
    edited = finished_with_status(kube, operator_kube, namespace, "spec-edited", "passed")
    changed = {**edited["spec"], "steps": [1, 2, 4]}
    with pytest.raises(KubeError) as refused:
        kube.patch(resource_path(namespace, "spec-edited"), {"spec": {"steps": [1, 2, 4]}}, MERGE)
    assert refused.value.status == 422
    assert SPEC_IMMUTABLE["message"] in str(refused.value)
    document = {**{k: edited[k] for k in ("apiVersion", "kind")}, "metadata": {"name": "spec-edited"}, "spec": changed}
    proc = kubectl(installed, "-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(document), check=False)
    assert proc.returncode != 0
    assert "spec is immutable" in proc.stderr, proc.stderr
    # the refusal a user sees from `kubectl patch` is the page's, word for word
    edit = '{"spec": {"stepTimeoutSeconds": 60}}'
    proc = kubectl(installed, "-n", namespace, "patch", "pbench/spec-edited", "--type=merge", "-p", edit, check=False)
    assert proc.returncode != 0
    shown = PAGE.read_text().split("```text\n", 1)[1].split("```", 1)[0]
    assert " ".join(shown.replace('"small"', '"spec-edited"').split()) in " ".join(proc.stderr.split()), proc.stderr
    after_edit = kube.get(resource_path(namespace, "spec-edited"))
    assert after_edit["metadata"]["generation"] == edited["metadata"]["generation"]
    assert after_edit["spec"] == edited["spec"]

    # labels-edited: metadata is not spec: accepted, and the generation stays
    labelled = finished_with_status(kube, operator_kube, namespace, "labels-edited", "passed")
    kubectl(installed, "-n", namespace, "label", "poolbenchmark/labels-edited", "team=payments")
    kubectl(installed, "-n", namespace, "annotate", "poolbenchmark/labels-edited", "note=rerun next week")
    after_label = kube.get(resource_path(namespace, "labels-edited"))
    assert after_label["metadata"]["labels"] == {"team": "payments"}
    assert after_label["metadata"]["generation"] == labelled["metadata"]["generation"]

    # cli-output: the document `poolbench run --output` writes, with no resource behind it
    cli_status = core_status("passed", None).to_json()  # as `poolbench run` dumps it: no generation to observe
    assert "observedGeneration" not in json.dumps(cli_status)
    cli = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "metadata": {"name": "cli-output"}, "spec": {}}
    cli["status"] = cli_status

    results = kstatus([*objects, after_edit, after_label, cli])
    got = {case: results[case].get("status", results[case].get("error")) for case in table}
    assert got == {case: row["kstatus"] for case, row in table.items()}, results
    for obj in objects:  # a Failed one says why: the status message (the verdict, or what broke)
        if results[obj["metadata"]["name"]]["status"] == "Failed":
            assert results[obj["metadata"]["name"]]["message"] == obj["status"]["message"]


#: The page's `kubectl wait` recipes (flag → whether it ends, for the passed and the step-failed case).
RECIPES = {
    "--for=condition=Ready": {"passed": True, "step-failed": False},
    "--for=condition=Stalled": {"passed": False, "step-failed": True},
    "--for=condition=Reconciling=false": {"passed": True, "step-failed": True},
}


def test_the_pages_kubectl_wait_recipes(
    installed: Any, kube: Kube, namespace: str, operator_kube: OperatorKube
) -> None:
    page = PAGE.read_text()
    for case in ("passed", "step-failed"):
        finished_with_status(kube, operator_kube, namespace, case, case)
        for flag, ends in RECIPES.items():
            assert f"kubectl wait {flag} pbench/small --timeout=30m" in page, flag
            proc = kubectl(installed, "-n", namespace, "wait", flag, f"pbench/{case}", "--timeout=3s", check=False)
            assert (proc.returncode == 0) == ends[case], (flag, case, proc.stdout, proc.stderr)
        # wait for the end, then check Ready once: the exit status says passed or failed
        assert "kubectl wait --for=condition=Ready pbench/small --timeout=0s" in page
        once = kubectl(
            installed, "-n", namespace, "wait", "--for=condition=Ready", f"pbench/{case}", "--timeout=0s", check=False
        )
        assert (once.returncode == 0) == (case == "passed"), (case, once.stdout, once.stderr)


def test_the_crd_never_stores_a_null_observed_generation(installed: Any, kube: Kube, namespace: str) -> None:
    """kstatus fails an object whose observedGeneration is null: the CRD declares it a plain integer, and
    the API server drops a null written there (a non-nullable field without a default) instead of storing it."""
    create(kube, namespace, "null-generation", {"steps": [1]})
    condition: dict[str, Any] = {"type": "Ready", "status": "False", "reason": "Pending"}
    condition["lastTransitionTime"] = "2026-01-01T00:00:00Z"
    condition["observedGeneration"] = None
    written = {"phase": "Pending", "observedGeneration": None, "conditions": [condition]}
    patch = [{"op": "add", "path": "/status", "value": written}]
    stored = kube.patch(resource_path(namespace, "null-generation") + "/status", patch, JSON_PATCH)
    assert stored["status"]["phase"] == "Pending"
    assert "observedGeneration" not in json.dumps(stored["status"]), stored["status"]
    assert kstatus([stored])["null-generation"].get("status") == "InProgress"
