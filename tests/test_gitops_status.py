"""A PoolBenchmark's status as GitOps tools read it: each case of docs/guides/gitops.md's table has the
phase and conditions the table says, no writer ever emits a null observedGeneration, and the CRD keeps
the spec immutable and a null out. (kstatus itself reads these cases in tests/k8s/test_kstatus_k8s.py.)"""

from __future__ import annotations

import json

import pytest

from poolbench.core.benchmark import invalid_status
from poolbench.core.crd import SPEC_IMMUTABLE, build_crd
from poolbench.core.results import BenchmarkStatus
from tests.harness.status_cases import API_CASES, CLI_CASES, CORE_CASES, conditions_cells, core_status, gitops_table

COLUMNS = ("phase", "Ready", "Reconciling", "Stalled")


@pytest.mark.parametrize("case", CORE_CASES)
def test_each_case_has_the_phase_and_conditions_of_the_pages_table(case: str) -> None:
    row = gitops_table()[case]
    status = core_status(case, generation=4)
    assert conditions_cells(status) == {column: row[column] for column in COLUMNS}
    assert status.observed_generation == 4
    assert [c.observed_generation for c in status.conditions] == [4, 4, 4]


def test_the_edited_and_cli_cases_read_as_the_passed_one() -> None:
    """An edit that is refused or touches only metadata leaves the passed status as it was; the CLI's
    JSON is the passed status without a generation."""
    table = gitops_table()
    assert set(table) == {*CORE_CASES, *API_CASES, *CLI_CASES}
    passed = conditions_cells(core_status("passed", generation=None))
    for case in (*API_CASES, *CLI_CASES):
        assert {column: table[case][column] for column in COLUMNS} == passed, case


def test_no_writer_emits_a_null_observed_generation() -> None:
    """kstatus fails an object whose observedGeneration is null: the key is an integer or absent."""
    unobserved = [core_status(case, generation=None).to_json() for case in CORE_CASES]
    unobserved += [invalid_status("spec.x: bad", None, "2026-01-01T00:00:00Z").to_json(), BenchmarkStatus().to_json()]
    for status in unobserved:
        assert "observedGeneration" not in json.dumps(status)
    observed = invalid_status("spec.x: bad", 7, "2026-01-01T00:00:00Z").to_json()
    assert observed["observedGeneration"] == 7
    assert [c["observedGeneration"] for c in observed["conditions"]] == [7, 7, 7]
    # model_dump without aliases (what a Python caller may use) leaves it out too
    assert "observed_generation" not in BenchmarkStatus().model_dump()


def test_the_crd_makes_spec_immutable_and_refuses_a_null_generation() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["properties"]["spec"]["x-kubernetes-validations"] == [SPEC_IMMUTABLE]
    status = schema["properties"]["status"]["properties"]
    assert status["observedGeneration"] == {"type": "integer"}
    assert status["conditions"]["items"]["properties"]["observedGeneration"] == {"type": "integer"}
