"""checkov over every Kubernetes object poolbench ships or creates: manifests/, the rendered chart and
``poolbench render`` of each example. Every finding is fixed, or its check is skipped in .checkov.yaml
with its reason in docs/security.md (checkov from hack/build-checkov.sh, helm from hack/build-helm.sh)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from poolbench.cli import main
from tests.conftest import ROOT
from tests.harness.builds import ensure

pytestmark = pytest.mark.helm


def scanned_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """manifests/, the chart as helm renders it, and what the operator would create for each example."""
    tree = tmp_path / "scan"
    shutil.copytree(ROOT / "manifests", tree / "manifests", ignore=shutil.ignore_patterns("examples"))
    chart = subprocess.run(
        [str(ensure("POOLBENCH_HELM")), "template", "poolbench", str(ROOT / "charts/poolbench"), "--include-crds"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (tree / "chart").mkdir()
    (tree / "chart/poolbench.yaml").write_text(chart)
    (tree / "rendered").mkdir()
    for example in sorted((ROOT / "manifests/examples").glob("*.yaml")):
        capsys.readouterr()
        assert main(["render", str(example)]) == 0
        (tree / "rendered" / example.name).write_text(capsys.readouterr().out)
    return tree


def checkov(tree: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [str(ensure("POOLBENCH_CHECKOV")), "--config-file", str(ROOT / ".checkov.yaml"), "-d", str(tree), "-o", "json"],
        capture_output=True,
        text=True,
        cwd=tree,
    )
    assert proc.stdout.strip(), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert isinstance(report, dict), report  # one framework: one report
    return report


def test_every_object_poolbench_ships_or_creates_passes_checkov(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = scanned_tree(tmp_path, capsys)
    report = checkov(tree)
    summary = report["summary"]
    failed = [
        (f["check_id"], f["check_name"], f["file_path"], f["resource"]) for f in report["results"]["failed_checks"]
    ]
    assert failed == [], "\n".join(map(str, failed))
    assert summary["parsing_errors"] == 0
    # It scanned what it was given: the operator's objects, the chart's, and each example's children.
    kinds = {r.split(".")[0] for r in {c["resource"] for c in report["results"]["passed_checks"]}}
    assert {"Deployment", "StatefulSet", "ClusterRole", "Pod"} <= kinds, kinds
    assert summary["passed"] > 0


def test_every_skipped_check_is_justified_in_the_docs() -> None:
    config = yaml.safe_load((ROOT / ".checkov.yaml").read_text())
    skipped = config["skip-check"]
    assert skipped == sorted(skipped, key=lambda c: int(re.sub(r"\D", "", c)))
    page = (ROOT / "docs/security.md").read_text()
    justified = set(re.findall(r"^\| `(CKV2?_K8S_\d+)` \|[^|]+\| *\S", page, flags=re.MULTILINE))
    assert set(skipped) == justified, set(skipped) ^ justified
