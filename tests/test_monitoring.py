"""The chart's alerts and dashboard are generated from the operator's metric names: the committed files
match the generator, and every metric and label their PromQL names is one the operator serves.

PromQL is parsed by promql-parser (a PromQL grammar, not a pattern): a query it cannot parse fails here.
promtool, Prometheus' own parser, checks the same queries in tests/test_chart_monitoring.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, get_args

import promql_parser as pq
import pytest
import yaml

from poolbench.core import monitoring
from poolbench.core.contracts import operator_metrics as m
from poolbench.core.results import ERROR_CLASSES, Phase
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

CHART_FILES = ROOT / "charts/poolbench/files"

#: How the operator serves each kind (the contract module's comments say which name is which).
COUNTERS = (m.FAILURES, m.RECONCILES, m.STATUS_PATCHES, m.API_ERRORS)
HISTOGRAMS = (m.STATEMENT_LATENCY, m.CHECKOUT_WAIT)
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def served_names() -> set[str]:
    """Every series name the operator serves: gauges as named, counters with ``_total``, histograms as
    their ``_bucket``, ``_sum`` and ``_count`` series."""
    names = {value for value in vars(m).values() if isinstance(value, str) and value.startswith("poolbench_")}
    assert set(COUNTERS) | set(HISTOGRAMS) <= names
    served = names - set(COUNTERS) - set(HISTOGRAMS)
    served |= {name + m.TOTAL for name in COUNTERS}
    served |= {name + suffix for name in HISTOGRAMS for suffix in HISTOGRAM_SUFFIXES}
    return served


SERVED_LABELS = {*m.BENCHMARK_LABELS, m.STATE_LABEL, m.CLASS_LABEL, m.PHASE_LABEL, "le"}


def walk(node: Any) -> Iterator[Any]:
    """Every node of a parsed PromQL expression."""
    yield node
    children: list[Any] = []
    if isinstance(node, pq.BinaryExpr):
        children = [node.lhs, node.rhs]
    elif isinstance(node, pq.AggregateExpr):
        children = [node.expr, node.param]
    elif isinstance(node, pq.Call):
        children = list(node.args)
    elif isinstance(node, pq.ParenExpr | pq.UnaryExpr | pq.SubqueryExpr):
        children = [node.expr]
    elif isinstance(node, pq.MatrixSelector):
        children = [node.vector_selector]
    for child in children:
        if isinstance(child, pq.Expr):
            yield from walk(child)


def names_and_labels(query: str) -> tuple[set[str], set[str]]:
    """The series names a query selects and the labels it matches, groups or joins on."""
    names: set[str] = set()
    labels: set[str] = set()
    for node in walk(pq.parse(query)):
        if isinstance(node, pq.VectorSelector):
            assert node.name, f"a selector without a metric name in {query}"
            names.add(node.name)
            labels |= {matcher.name for matcher in node.matchers.matchers}
        elif isinstance(node, pq.AggregateExpr) and node.modifier is not None:
            labels |= set(node.modifier.labels)
        elif isinstance(node, pq.BinaryExpr) and node.modifier is not None and node.modifier.matching is not None:
            labels |= set(node.modifier.matching.labels)
    return names, labels


def grafana_to_promql(query: str) -> str:
    """A panel's query as Grafana sends it: its range variable replaced (``$namespace`` and the others sit
    inside label values, where any text parses)."""
    return query.replace(monitoring.RATE_INTERVAL, "5m")


def alert_queries() -> list[str]:
    rules = monitoring.rule_groups(monitoring.AlertSettings())["groups"][0]["rules"]
    return [rule["expr"] for rule in rules]


def dashboard_queries() -> list[str]:
    return [grafana_to_promql(q) for q in monitoring.panel_queries(monitoring.dashboard())]


def test_committed_chart_files_match_the_generator() -> None:
    assert (CHART_FILES / "rules.yaml").read_text() == monitoring.helm_rules_yaml(), "run: make monitoring"
    assert (CHART_FILES / "dashboard.json").read_text() == monitoring.dashboard_json(), "run: make monitoring"


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_query_names_only_what_the_operator_serves(source: str) -> None:
    queries = alert_queries() if source == "alerts" else dashboard_queries()
    assert queries
    served = served_names()
    used: set[str] = set()
    for query in queries:
        names, labels = names_and_labels(query)
        assert names, query
        assert names <= served, f"{sorted(names - served)} in {query}"
        assert labels <= SERVED_LABELS, f"{sorted(labels - SERVED_LABELS)} in {query}"
        used |= names
    if source == "dashboard":
        # The panels the dashboard promises: connections by state vs usable and max_connections, ghosts,
        # failures by class, both histograms' quantiles.
        assert {
            m.BACKENDS,
            m.USABLE_CONNECTIONS,
            m.MAX_CONNECTIONS,
            m.GHOST_BACKENDS,
            m.FAILURES + m.TOTAL,
            m.STATEMENT_LATENCY + "_bucket",
            m.CHECKOUT_WAIT + "_bucket",
        } <= used


def test_the_name_check_catches_a_misspelt_metric() -> None:
    names, labels = names_and_labels('sum by (variant) (rate(poolbench_benchmark_failure_total{klass="x"}[5m]))')
    assert names == {"poolbench_benchmark_failure_total"}
    assert not names <= served_names()
    assert "klass" in labels
    with pytest.raises(ValueError):
        pq.parse("sum by (variant) (rate(poolbench_benchmark_failures_total[5m])")


def test_alerts_match_the_contract_values() -> None:
    """The refusal classes are the results' error classes, the phase one of the status' phases."""
    assert set(monitoring.REFUSAL_CLASSES) <= set(ERROR_CLASSES)
    assert monitoring.RUNNING_PHASE in get_args(Phase)
    refusals = monitoring.refusals_expr(monitoring.AlertSettings())
    assert '{class=~"tooManyClients|reservedSlots"}' in refusals


def test_dashboard_panels_are_timeseries_per_variant_of_the_selected_benchmarks() -> None:
    doc = json.loads(monitoring.dashboard_json())
    variables = [v["name"] for v in doc["templating"]["list"]]
    assert variables == ["datasource", *m.BENCHMARK_LABELS]
    assert {panel["type"] for panel in doc["panels"]} == {"timeseries"}
    for panel in doc["panels"]:
        for target in panel["targets"]:
            for label in m.BENCHMARK_LABELS:
                assert f'{label}=~"${label}"' in target["expr"], target["expr"]
            assert f"{{{{{m.VARIANT_LABEL}}}}}" in target["legendFormat"]
    quantiles = [t["expr"] for p in doc["panels"] for t in p["targets"] if "histogram_quantile" in t["expr"]]
    assert len(quantiles) == 2 * len(monitoring.QUANTILES)
    # Panels do not overlap on Grafana's 24-column grid.
    cells = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in doc["panels"]]
    assert len(set(cells)) == len(cells)


def test_the_plain_rule_file_is_the_chart_form_with_the_defaults() -> None:
    """``poolbench alerts`` (for a Prometheus without the operator) and the chart say the same."""
    plain = yaml.safe_load(monitoring.rules_yaml())
    assert plain == monitoring.rule_groups(monitoring.AlertSettings())
    helm_form = monitoring.helm_rules_yaml()
    assert "{{`{{ $labels.namespace }}`}}" in helm_form
    assert "{{ .Values.metrics.prometheusRule.connectionBudget.threshold }}" in helm_form


def test_cli_prints_the_rules_and_the_dashboard(capsys: pytest.CaptureFixture[str]) -> None:
    from poolbench.cli import main

    assert main(["alerts"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == monitoring.rule_groups(monitoring.AlertSettings())
    assert main(["alerts", "--helm"]) == 0
    assert capsys.readouterr().out == (CHART_FILES / "rules.yaml").read_text()
    assert main(["dashboard"]) == 0
    assert json.loads(capsys.readouterr().out) == monitoring.dashboard()
