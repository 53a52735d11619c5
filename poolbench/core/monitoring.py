"""The chart's Prometheus alerts and Grafana dashboard, written once from the operator's metric names.

Every expression here names its metrics through ``contracts.operator_metrics``, so an alert or a panel
can only query what the operator serves. ``poolbench alerts`` prints the rule groups for a plain
Prometheus (``rule_files``) with the default settings; ``poolbench alerts --helm`` prints the form the
chart embeds (``charts/poolbench/files/rules.yaml``), whose settings are the chart's values;
``poolbench dashboard`` prints the dashboard (``charts/poolbench/files/dashboard.json``). ``make
monitoring`` writes both chart files and a test proves the committed ones match.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields, replace
from typing import Any

import yaml

from .contracts import operator_metrics as m
from .outcomes import RESERVED_SLOTS, TOO_MANY_CLIENTS

#: The phase (``results.Phase``) in which a benchmark is expected to keep making progress.
RUNNING_PHASE = "Running"
#: The failure classes that say the server refused a connection for want of a slot.
REFUSAL_CLASSES = (TOO_MANY_CLIENTS, RESERVED_SLOTS)
GROUP_NAME = "poolbench"

BUDGET_ALERT = "PoolbenchConnectionBudgetHigh"
REFUSALS_ALERT = "PoolbenchConnectionsRefused"
STALLED_ALERT = "PoolbenchBenchmarkStalled"
ALERTS = (BUDGET_ALERT, REFUSALS_ALERT, STALLED_ALERT)


@dataclass(frozen=True)
class AlertSettings:
    """What a user tunes, as the text that goes into the rules. Defaults equal the chart's values.yaml;
    a test renders the chart and compares."""

    budget_threshold: str = "0.8"  # fraction of the usable connections
    budget_for: str = "5m"
    budget_severity: str = "warning"
    refusals_window: str = "5m"  # increase() over this range
    refusals_for: str = "0m"
    refusals_severity: str = "warning"
    stalled_minutes: str = "10"  # minutes without progress while Running
    stalled_for: str = "0m"
    stalled_severity: str = "warning"


#: The chart's values each setting comes from (under ``metrics.prometheusRule``).
HELM_VALUES = {
    "budget_threshold": "connectionBudget.threshold",
    "budget_for": "connectionBudget.for",
    "budget_severity": "connectionBudget.severity",
    "refusals_window": "refusals.window",
    "refusals_for": "refusals.for",
    "refusals_severity": "refusals.severity",
    "stalled_minutes": "stalled.minutes",
    "stalled_for": "stalled.for",
    "stalled_severity": "stalled.severity",
}
HELM_VALUES_ROOT = ".Values.metrics.prometheusRule"


def _by(*labels: str) -> str:
    return f"by ({', '.join(labels)})"


def _on(*labels: str) -> str:
    return f"on ({', '.join(labels)})"


def _series(labels: tuple[str, ...] = m.BENCHMARK_LABELS) -> str:
    """A Prometheus alert template naming one benchmark's series: ``ns/benchmark (variant)``."""
    ns, bench, variant = (f"{{{{ $labels.{label} }}}}" for label in labels)
    return f"{ns}/{bench} ({variant})"


def budget_expr(s: AlertSettings) -> str:
    """Client backends over the usable connections, per benchmark and variant, above the threshold."""
    by = _by(*m.BENCHMARK_LABELS)
    return (
        f"sum {by} ({m.BACKENDS}) / {_on(*m.BENCHMARK_LABELS)} max {by} ({m.USABLE_CONNECTIONS} > 0)"
        f" > {s.budget_threshold}"
    )


def refusals_expr(s: AlertSettings) -> str:
    """Connection attempts the server refused for want of a slot, within the window."""
    classes = "|".join(REFUSAL_CLASSES)
    counter = f'{m.FAILURES}{m.TOTAL}{{{m.CLASS_LABEL}=~"{classes}"}}'
    return f"sum {_by(*m.BENCHMARK_LABELS, m.CLASS_LABEL)} (increase({counter}[{s.refusals_window}])) > 0"


def stalled_expr(s: AlertSettings) -> str:
    """Seconds since the last progress, while the benchmark is Running, beyond the limit. The phase is
    matched on the benchmark alone (``and`` allows many-to-many), so a phase served with or without the
    variant label both match."""
    running = f'max {_by(m.NAMESPACE_LABEL, m.BENCHMARK_LABEL)} ({m.PHASE}{{{m.PHASE_LABEL}="{RUNNING_PHASE}"}}) == 1'
    since = f"time() - max {_by(*m.BENCHMARK_LABELS)} ({m.PROGRESS})"
    return f"({since}) > {s.stalled_minutes} * 60 and {_on(m.NAMESPACE_LABEL, m.BENCHMARK_LABEL)} ({running})"


def rule_groups(s: AlertSettings) -> dict[str, Any]:
    """The rule file's content (also a PrometheusRule's ``spec``)."""
    who = _series()
    rules = [
        {
            "alert": BUDGET_ALERT,
            "expr": budget_expr(s),
            "for": s.budget_for,
            "labels": {"severity": s.budget_severity},
            "annotations": {
                "summary": f"{who} uses {{{{ $value | humanizePercentage }}}} of the usable connections",
                "description": (
                    "The workload's client backends (every state) have been above "
                    f"{s.budget_threshold} of the connections its role may use for {s.budget_for}: "
                    "a little more and the server refuses logins (too many clients)."
                ),
            },
        },
        {
            "alert": REFUSALS_ALERT,
            "expr": refusals_expr(s),
            "for": s.refusals_for,
            "labels": {"severity": s.refusals_severity},
            "annotations": {
                "summary": f"{who}: the server refused connections ({{{{ $labels.{m.CLASS_LABEL} }}}})",
                "description": (
                    f"{{{{ $value | humanize }}}} connection attempts failed with {{{{ $labels.{m.CLASS_LABEL} }}}} "
                    f"in the last {s.refusals_window}: the server ran out of connection slots "
                    "(max_connections, or the slots reserved for superusers)."
                ),
            },
        },
        {
            "alert": STALLED_ALERT,
            "expr": stalled_expr(s),
            "for": s.stalled_for,
            "labels": {"severity": s.stalled_severity},
            "annotations": {
                "summary": f"{who} is Running but has made no progress for {{{{ $value | humanizeDuration }}}}",
                "description": (
                    f"No read, no step begun or ended for more than {s.stalled_minutes} minutes while the "
                    "phase is Running: look at the operator's log and the workload's pods."
                ),
            },
        },
    ]
    return {"groups": [{"name": GROUP_NAME, "rules": rules}]}


def _dump(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False, width=1000)


def rules_yaml() -> str:
    """A Prometheus rule file with the default settings."""
    return _dump(rule_groups(AlertSettings()))


_PROMETHEUS_TEMPLATE = re.compile(r"\{\{.*?\}\}")


def helm_rules_yaml() -> str:
    """The chart's rule file: settings read from the values, Prometheus' own ``{{ }}`` templates kept
    as Go raw strings so that Helm's ``tpl`` hands them on unchanged."""
    marks = {f.name: f"@@{f.name}@@" for f in fields(AlertSettings)}
    text = _dump(rule_groups(replace(AlertSettings(), **marks)))
    text = _PROMETHEUS_TEMPLATE.sub(lambda found: "{{`" + found.group(0) + "`}}", text)
    for name, mark in marks.items():
        text = text.replace(mark, f"{{{{ {HELM_VALUES_ROOT}.{HELM_VALUES[name]} }}}}")
    header = "# Generated by `make monitoring` from poolbench/core/monitoring.py: do not edit.\n"
    return header + text


# --- the Grafana dashboard -------------------------------------------------------------------------

DASHBOARD_UID = "poolbench"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: Grafana's per-panel range for rate() and increase(): at least four scrape intervals.
RATE_INTERVAL = "$__rate_interval"
QUANTILES = (0.5, 0.95, 0.99)


def selector(*extra: str) -> str:
    """The label matchers of the dashboard's variables (each may hold several values, or all)."""
    matchers = [f'{label}=~"${label}"' for label in m.BENCHMARK_LABELS]
    return "{" + ", ".join([*matchers, *extra]) + "}"


#: One query of a panel and its legend (Grafana's ``{{label}}`` templates).
Query = tuple[str, str]


def _quantiles(histogram: str) -> list[Query]:
    by = _by(m.VARIANT_LABEL, "le")
    return [
        (
            f"histogram_quantile({q}, sum {by} (rate({histogram}_bucket{selector()}[{RATE_INTERVAL}])))",
            f"{{{{{m.VARIANT_LABEL}}}}} p{round(q * 100)}",
        )
        for q in QUANTILES
    ]


def _gauges(*metrics: tuple[str, str]) -> list[Query]:
    """Per variant, each gauge's largest sample (one operator may serve it more than once while a new
    one takes over), with the legend's suffix."""
    legend = f"{{{{{m.VARIANT_LABEL}}}}}"
    return [
        (f"max {_by(m.VARIANT_LABEL)} ({metric}{selector()})", f"{legend} {suffix}".strip())
        for metric, suffix in metrics
    ]


def _panels() -> list[tuple[str, str, str, list[Query]]]:
    """(title, description, unit, queries) of each panel, in reading order."""
    v = m.VARIANT_LABEL
    legend = f"{{{{{v}}}}}"
    by_state = (f"sum {_by(v, m.STATE_LABEL)} ({m.BACKENDS}{selector()})", f"{legend} {{{{{m.STATE_LABEL}}}}}")
    failures = f"sum {_by(v, m.CLASS_LABEL)} (rate({m.FAILURES}{m.TOTAL}{selector()}[{RATE_INTERVAL}]))"
    return [
        (
            "Connections by state vs usable",
            "The workload's client backends by state, against the slots its role may use and the server's "
            "max_connections.",
            "short",
            [
                by_state,
                *_gauges(
                    (m.USABLE_CONNECTIONS, "usable"),
                    (m.MAX_CONNECTIONS, "max_connections"),
                    (m.PEAK_BACKENDS, "step peak"),
                ),
            ],
        ),
        (
            "Ghosts",
            "Idle connections still open when the last finished step's work ended.",
            "short",
            _gauges((m.GHOST_BACKENDS, "")),
        ),
        (
            "Failures by class",
            "Failed attempts per second by class; tooManyClients and reservedSlots are the server's refusals.",
            "ops",
            [(failures, f"{legend} {{{{{m.CLASS_LABEL}}}}}")],
        ),
        (
            "Replicas and step",
            "The current step's replicas, and the step (1-based) of the plan's steps.",
            "short",
            _gauges((m.REPLICAS, "replicas"), (m.STEP, "step"), (m.STEPS, "steps")),
        ),
        (
            "Statement latency",
            "Quantiles of the statements' latency, merged over the replicas.",
            "s",
            _quantiles(m.STATEMENT_LATENCY),
        ),
        (
            "Checkout wait",
            "Quantiles of the time a request waited for a connection from its pool.",
            "s",
            _quantiles(m.CHECKOUT_WAIT),
        ),
    ]


def _variable(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,  # on time range change
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
    }


def dashboard() -> dict[str, Any]:
    """A Grafana dashboard of timeseries panels, two per row, per variant of the selected benchmarks."""
    panels = []
    for i, (title, description, unit, queries) in enumerate(_panels()):
        targets = [
            {"refId": chr(ord("A") + j), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for j, (expr, legend) in enumerate(queries)
        ]
        panels.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": title,
                "description": description,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
                "targets": targets,
            }
        )
    ns, bench, variant = m.BENCHMARK_LABELS
    variables = [
        {
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
        },
        _variable(ns, f"label_values({m.PHASE}, {ns})"),
        _variable(bench, f'label_values({m.PHASE}{{{ns}=~"${ns}"}}, {bench})'),
        _variable(variant, f'label_values({m.BACKENDS}{{{ns}=~"${ns}", {bench}=~"${bench}"}}, {variant})'),
    ]
    return {
        "uid": DASHBOARD_UID,
        "title": "poolbench",
        "description": "Connections, ghosts, failures and latency of PoolBenchmarks, per variant.",
        "tags": ["poolbench"],
        "editable": True,
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": variables},
        "panels": panels,
    }


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def panel_queries(doc: dict[str, Any]) -> list[str]:
    """Every PromQL query of a dashboard: its panels' targets."""
    return [target["expr"] for panel in doc["panels"] for target in panel["targets"]]
