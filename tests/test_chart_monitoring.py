"""The chart's PrometheusRule and Grafana dashboard as Helm renders them, checked by Prometheus' promtool
(Debian's ``prometheus`` package): the rules parse and their unit tests (tests/promtool/) pass, and every
panel query parses. In the k8s tier with the other chart tests: they run helm and promtool."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from poolbench.core import monitoring
from tests.conftest import ROOT
from tests.test_chart import render

pytestmark = pytest.mark.helm

PROMTOOL_TESTS = ROOT / "tests/promtool/alerts_test.yaml"
RULE = "templates/prometheusrule.yaml"
DASHBOARD = "templates/grafana-dashboard.yaml"


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: apt-get install prometheus (Debian)", pytrace=False)
    return subprocess.run([path, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def promtool(*args: str, cwd: Path) -> str:
    proc = run_promtool(*args, cwd=cwd)
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def rendered_rule(*sets: str) -> dict[str, Any]:
    args = ["--set", "metrics.prometheusRule.enabled=true"]
    for s in sets:
        args += ["--set", s]
    (rule,) = render("--show-only", RULE, *args)
    return rule


def rendered_dashboard(*args: str) -> dict[str, Any]:
    (config_map,) = render("--show-only", DASHBOARD, "--set", "grafanaDashboard.create=true", *args)
    return config_map


def test_nothing_is_rendered_unless_enabled() -> None:
    ours = ("PrometheusRule", "ConfigMap")
    assert not [d for d in render() if d["kind"] in ours]
    rule_only = render("--set", "metrics.prometheusRule.enabled=true")
    assert [d["kind"] for d in rule_only if d["kind"] in ours] == ["PrometheusRule"]
    dashboard_only = render("--set", "grafanaDashboard.create=true")
    assert [d["kind"] for d in dashboard_only if d["kind"] in ours] == ["ConfigMap"]


def test_rule_with_the_default_values_is_the_generated_rule_file() -> None:
    rule = rendered_rule("metrics.prometheusRule.labels.release=prometheus")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "poolbench-system"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    # values.yaml's defaults are the generator's: `poolbench alerts` and the chart alert alike.
    assert rule["spec"] == monitoring.rule_groups(monitoring.AlertSettings())


def test_rule_settings_come_from_the_values() -> None:
    rule = rendered_rule(
        "metrics.prometheusRule.connectionBudget.threshold=0.65",
        "metrics.prometheusRule.connectionBudget.for=2m",
        "metrics.prometheusRule.connectionBudget.severity=critical",
        "metrics.prometheusRule.refusals.window=15m",
        "metrics.prometheusRule.refusals.for=1m",
        "metrics.prometheusRule.refusals.severity=info",
        "metrics.prometheusRule.stalled.minutes=30",
        "metrics.prometheusRule.stalled.for=1h30m",
        "metrics.prometheusRule.stalled.severity=page",
    )
    expected = monitoring.AlertSettings(
        budget_threshold="0.65",
        budget_for="2m",
        budget_severity="critical",
        refusals_window="15m",
        refusals_for="1m",
        refusals_severity="info",
        stalled_minutes="30",
        stalled_for="1h30m",
        stalled_severity="page",
    )
    assert rule["spec"] == monitoring.rule_groups(expected)


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("connectionBudget.threshold=80", "connectionBudget.threshold"),
        ("connectionBudget.threshold=0", "connectionBudget.threshold"),
        ("connectionBudget.for=5 minutes", "connectionBudget.for"),
        ("refusals.for=1m5h", "refusals.for"),  # units largest first, as Prometheus reads them
        ("refusals.window=0", "refusals.window"),
        ("stalled.minutes=0", "stalled.minutes"),
        ("stalled.for=soon", "stalled.for"),
    ],
)
def test_a_bad_setting_is_named(setting: str, field: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failed:
        rendered_rule(f"metrics.prometheusRule.{setting}")
    assert f"metrics.prometheusRule.{field} must be" in failed.value.stderr


def write_rules(tmp_path: Path, *sets: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rendered_rule(*sets)["spec"], sort_keys=False))
    return path


def test_promtool_checks_the_rendered_rules(tmp_path: Path) -> None:
    out = promtool("check", "rules", str(write_rules(tmp_path)), cwd=tmp_path)
    assert f"SUCCESS: {len(monitoring.ALERTS)} rules found" in out


def test_promtool_unit_tests_each_alert_firing_and_not(tmp_path: Path) -> None:
    """tests/promtool/alerts_test.yaml, next to the rules as the chart renders them with its defaults."""
    write_rules(tmp_path)
    shutil.copy(PROMTOOL_TESTS, tmp_path / PROMTOOL_TESTS.name)
    tested = yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
    cases = [case for test in tested for case in test["alert_rule_test"]]
    for alert in monitoring.ALERTS:
        expectations = [bool(case["exp_alerts"]) for case in cases if case["alertname"] == alert]
        assert set(expectations) == {True, False}, f"{alert}: a firing and a quiet case"
    assert "SUCCESS" in promtool("test", "rules", PROMTOOL_TESTS.name, cwd=tmp_path)


def test_promtool_unit_tests_fail_when_the_rules_say_otherwise(tmp_path: Path) -> None:
    """The same tests against rules with other settings: promtool reports the alerts that changed."""
    write_rules(
        tmp_path,
        "metrics.prometheusRule.connectionBudget.threshold=0.95",
        "metrics.prometheusRule.stalled.minutes=20",
    )
    shutil.copy(PROMTOOL_TESTS, tmp_path / PROMTOOL_TESTS.name)
    proc = run_promtool("test", "rules", PROMTOOL_TESTS.name, cwd=tmp_path)
    assert proc.returncode != 0
    report = proc.stdout + proc.stderr
    assert "alertname: PoolbenchConnectionBudgetHigh, time: 10m" in report
    assert "alertname: PoolbenchBenchmarkStalled, time: 16m" in report
    assert "alertname: PoolbenchConnectionsRefused" not in report


def test_dashboard_config_map_holds_the_generated_dashboard() -> None:
    config_map = rendered_dashboard(
        "--set", "grafanaDashboard.namespace=monitoring", "--set", "grafanaDashboard.annotations.grafana_folder=pb"
    )
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "pb"}
    assert json.loads(config_map["data"]["poolbench.json"]) == monitoring.dashboard()
    assert rendered_dashboard()["metadata"]["namespace"] == "poolbench-system"


def test_promtool_parses_every_panel_query(tmp_path: Path) -> None:
    """Each panel query, as Grafana sends it, becomes a recording rule: ``promtool check rules`` parses
    every expression with Prometheus' own parser and names a query it cannot parse."""
    config_map = rendered_dashboard()
    queries = monitoring.panel_queries(json.loads(config_map["data"]["poolbench.json"]))
    rules = [
        {"record": f"poolbench:panel_query:{i}", "expr": query.replace(monitoring.RATE_INTERVAL, "5m")}
        for i, query in enumerate(queries)
    ]
    path = tmp_path / "panels.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in promtool("check", "rules", str(path), cwd=tmp_path)
    # and it does reject a query that does not parse
    rules.append({"record": "poolbench:panel_query:bad", "expr": "sum by (variant) (rate(x[5m])"})
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    proc = run_promtool("check", "rules", str(path), cwd=tmp_path)
    assert proc.returncode != 0
    assert "poolbench:panel_query:bad" in proc.stdout + proc.stderr
