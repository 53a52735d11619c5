"""``kubectl poolbench`` without a cluster: its krew manifest and archive, its completion, and how it words
a status (the k8s tier runs it against a real API server: tests/k8s/test_kubectl_plugin_k8s.py)."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from poolbench import __version__, kubectl
from poolbench.core.results import BenchmarkStatus, Outcome, Phase, StepResult, VariantStatus, Verdict

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "plugins" / "poolbench.yaml"


def test_the_krew_manifest_names_the_plugin_and_the_package_version() -> None:
    manifest = yaml.safe_load(MANIFEST.read_text())
    assert manifest["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert manifest["kind"] == "Plugin"
    assert manifest["metadata"]["name"] == "poolbench"
    assert manifest["spec"]["version"] == f"v{__version__}"
    (platform,) = manifest["spec"]["platforms"]
    assert platform["bin"] == "kubectl-poolbench"
    assert f"/v{__version__}/" in platform["uri"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kubectl-poolbench"] == "poolbench.kubectl:main"
    assert scripts["kubectl_complete-poolbench"] == "poolbench.kubectl:complete"


def test_the_krew_archive_is_the_one_the_manifest_names(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "krew-archive", f"DIST={tmp_path}"], cwd=ROOT, check=True, capture_output=True)
    archive = (tmp_path / "kubectl-poolbench.tar.gz").read_bytes()
    (platform,) = yaml.safe_load(MANIFEST.read_text())["spec"]["platforms"]
    assert hashlib.sha256(archive).hexdigest() == platform["sha256"], "run make krew-archive and update the sha256"


@pytest.mark.parametrize("missing", ["kubernetes", "rich"])
@pytest.mark.parametrize("command", [["status", "x"], ["list"], ["watch", "x"], ["report", "x"]])
def test_a_missing_extra_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], missing: str, command: list[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    assert kubectl.main(command) == 1
    assert capsys.readouterr().err == (
        f"kubectl poolbench: kubectl poolbench needs the 'kubectl' extra ({missing} is not installed):"
        " pip install 'poolbench[kubectl]'\n"
    )


def test_report_without_jinja2_names_the_report_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jinja2" else real(name, *a))
    assert kubectl.main(["report", "x", "-o", "x.html"]) == 1
    assert (
        "needs the 'report' extra (jinja2 is not installed): pip install 'poolbench[report]'" in capsys.readouterr().err
    )


def listing(seen: list[argparse.Namespace]) -> Any:
    def names(flags: argparse.Namespace) -> list[str]:
        seen.append(flags)
        return ["finished", "failed", "compared"]

    return names


def test_completion_offers_subcommands_formats_and_names_with_the_flags_given() -> None:
    seen: list[argparse.Namespace] = []
    names = listing(seen)
    assert kubectl.completions([""], names) == ["status", "list", "watch", "report"]
    assert kubectl.completions(["report", "c"], names) == ["compared"]
    assert kubectl.completions(["report", "compared", "-o", ""], names) == []
    assert kubectl.completions(["w"], names) == ["watch"]
    assert kubectl.completions(["status", "f"], names) == ["finished", "failed"]
    assert kubectl.completions(["status", "finished", "-o", ""], names) == ["json", "yaml"]
    assert kubectl.completions(["status", "finished", ""], names) == [], "one name only"
    assert kubectl.completions(["list", ""], names) == []
    assert kubectl.completions(["watch", "-n", "shop", "--context=kind", "--kubeconfig", "/k", "c"], names) == [
        "compared"
    ]
    assert (seen[-1].namespace, seen[-1].context, seen[-1].kubeconfig) == ("shop", "kind", "/k")


def test_the_completer_prints_kubectl_s_directive_even_without_a_cluster(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    assert kubectl.complete(["status", ""]) == 0
    assert capsys.readouterr().out == ":4\n"
    assert kubectl.complete(["report", "x", "-o", "r"]) == 0
    assert capsys.readouterr().out == ":0\n", "the shell completes the report's file name"


def status(phase: Phase, outcomes: list[Outcome], **extra: Any) -> dict[str, Any]:
    steps = [StepResult(replicas=i + 1, outcome=o) for i, o in enumerate(outcomes)]
    passed = [s.replicas for s in steps if s.outcome == "Passed"]
    failed = [s.replicas for s in steps if s.outcome == "Failed"]
    verdict = Verdict(max_safe_replicas=max(passed, default=None), first_failing_replicas=min(failed, default=None))
    return BenchmarkStatus(
        phase=phase,
        max_connections=20,
        verdict=verdict,
        variants=[VariantStatus(name="direct", steps=steps, verdict=verdict)],
        **extra,
    ).to_json()


@pytest.mark.parametrize(
    ("document", "style", "words"),
    [
        (status("Completed", ["Passed", "Passed"]), "green", "safe up to 2"),
        (status("Failed", ["Passed", "Failed"]), "red", "safe up to 1, fails at 2"),
        (status("Failed", ["Passed", "Inconclusive"]), "yellow", "safe up to 1"),
        (status("Running", ["Passed"], progress="2/3", live_connections=5), "yellow", "step 2/3, 5 connections now"),
        ({"phase": "Invalid", "message": "spec.steps: must not be empty"}, "red", "invalid spec: spec.steps"),
        ({"phase": "Failed", "message": "the database never got ready"}, "red", "could not run: the database"),
        ({}, "yellow", "not started"),
    ],
)
def test_the_verdict_s_colour_and_short_words(document: dict[str, Any], style: str, words: str) -> None:
    assert kubectl.verdict_style(document) == style
    assert kubectl.short_verdict(document).startswith(words), kubectl.short_verdict(document)


def rendered(resource: dict[str, Any]) -> str:
    console = Console(width=200, record=True, color_system=None)
    kubectl.print_status(console, resource)
    return console.export_text()


def test_an_own_app_benchmark_gets_its_own_short_section() -> None:
    document = status("Completed", [])
    document["database"] = {
        "host": "db.shop",
        "port": 5432,
        "dbname": "shop",
        "maxConnections": 100,
        "superuserReservedConnections": 3,
        "reservedConnections": 2,
        "usableForNormalRole": 95,
    }
    document["target"] = {
        "deployment": "web",
        "mode": "Step",
        "originalReplicas": 2,
        "restored": True,
        "steps": [{"replicas": 2, "observation": {"perPodPeak": 5, "appPeak": 10, "othersPeak": 4, "minHeadroom": 81}}],
        "answerWords": "17 replicas fit at rest",
        "warnings": ["the HPA may scale past 17"],
    }
    text = rendered({"metadata": {"name": "own", "namespace": "shop"}, "spec": {}, "status": document})
    assert "max_connections 100 · reserved 5 · usable 95 for a normal role (read live from db.shop:5432/shop)" in text
    assert "own app: deployment web (Step)" in text
    assert "per pod peak 5 · app peak 10 · other tenants' peak 4 · least headroom 81" in text
    assert "answer: 17 replicas fit at rest" in text
    assert "replicas put back to 2" in text
    assert "warning: the HPA may scale past 17" in text


def test_a_benchmark_not_yet_started_shows_no_tables() -> None:
    text = rendered({"metadata": {"name": "new", "namespace": "ns"}, "spec": {"steps": [1]}})
    assert "phase: Pending" in text
    assert "verdict: no verdict yet" in text
    assert "max_connections 100 · reserved 0 · usable 99 for role superuser" in text
    assert "PoolBenchmark results" not in text


class ScriptedCluster:
    """Answers ``get`` with the statuses a benchmark goes through, one a read."""

    def __init__(self, *statuses: dict[str, Any]):
        self.statuses = list(statuses)
        self.reads = 0

    def get(self, name: str) -> dict[str, Any]:
        status = self.statuses[min(self.reads, len(self.statuses) - 1)]
        self.reads += 1
        return {"metadata": {"name": name}, "status": status}


def test_watch_shows_each_change_once_and_stops_at_a_final_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubectl, "WATCH_POLL_SECONDS", 0.0)
    running = status("Running", ["Passed"], progress="2/3", live_connections=5)
    cluster = ScriptedCluster({}, running, running, status("Completed", ["Passed", "Passed"], progress="2/2"))
    shown: list[str] = []
    last = kubectl.follow(cluster, "b", shown.append)  # type: ignore[arg-type]
    assert cluster.reads == 4
    assert last["status"]["phase"] == "Completed"
    assert [line.split(" · ")[0] for line in shown] == ["b Pending", "b Running", "b Completed"]
    assert "live connections 5" in shown[1]
