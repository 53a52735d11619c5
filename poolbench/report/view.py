"""What the HTML report shows, computed from one PoolBenchmark document: no I/O, no markup.

``document`` is what ``poolbench run --output`` writes ({apiVersion, kind, metadata, spec, status,
timeline, serverTimeline}) or a custom resource read from a cluster (no timeline there: the charts
that need one fall back to the status' per-step figures, and say so).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from ..core.benchmark import full_status
from ..core.plan import plan
from ..core.results import ERROR_CLASSES, GhostConnection, parse_ghosts
from ..core.spec import DIRECT, PoolBenchmarkSpec
from .charts import MAX_CONNECTIONS_COLOR, USABLE_COLOR, Chart, Series, connections_over_time, grouped_bars

#: The per-step table: header, the step field it shows (dotted for nested), and the unit.
STEP_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("Replicas", "replicas", ""),
    ("Outcome", "outcome", ""),
    ("Predicted peak", "predictedPeak", ""),
    ("Measured peak", "peakConnections", ""),
    ("Peak source", "peakSource", ""),
    ("Sampled peak", "sampledPeakConnections", ""),
    ("Pools' peak", "clientPeakConnections", ""),
    ("Usable", "usableConnections", ""),
    ("Predicted ghosts", "predictedIdle", ""),
    ("Ghosts (idle at end)", "idleAtEnd", ""),
    ("Ghosts (server log)", "serverGhosts", ""),
    ("Errors", "errors", ""),
    ("Refusals", "refusals", ""),
    ("Latency p50", "latencyMs.p50", "ms"),
    ("Latency p95", "latencyMs.p95", "ms"),
    ("Latency p99", "latencyMs.p99", "ms"),
    ("Latency max", "latencyMs.max", "ms"),
    ("Wait p50", "checkoutWaitMs.p50", "ms"),
    ("Wait p95", "checkoutWaitMs.p95", "ms"),
    ("Wait p99", "checkoutWaitMs.p99", "ms"),
    ("Wait max", "checkoutWaitMs.max", "ms"),
    ("Throughput", "throughput", "/s"),
    ("Queries", "queries", ""),
)


def number(value: Any) -> str:
    """A value as the report prints it: integers whole, other numbers to two decimals at most, none as –."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = f"{value:.2f}".rstrip("0").rstrip(".")
        return "0" if text in ("", "-0") else text
    return str(value)


def step_value(step: dict[str, Any], path: str) -> Any:
    """The step's value at ``path`` (dotted); ``errors`` is the total of its error classes."""
    if path == "errors":
        return sum(int(v) for k, v in (step.get("errors") or {}).items() if k in ERROR_CLASSES)
    value: Any = step
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


@dataclass
class Fact:
    """One row of a facts table: what, its value, and where the value came from."""

    name: str
    value: str
    source: str = ""


@dataclass
class StepRow:
    variant: str
    label: str
    outcome: str
    cells: list[tuple[str, str]]  # (field, printed value)
    reason: str
    first_error: str
    first_error_class: str
    errors_by_class: list[tuple[str, int]]
    ghosts: list[GhostConnection]
    pooler: list[Fact]


@dataclass
class VariantPlan:
    name: str
    head: str
    facts: list[Fact]
    notes: list[str]
    recommendations: list[str]


@dataclass
class ReportView:
    title: str
    name: str
    kind: str
    phase: str
    updated_at: str
    verdict: str
    variant_verdicts: list[tuple[str, str]]
    comparison: str
    first_errors: list[tuple[str, str, str]]  # variant, class, message
    server: list[Fact]
    configuration: list[Fact]
    variants: list[Fact]
    columns: list[tuple[str, str, str]]
    rows: list[StepRow]
    charts: list[Chart]
    plans: list[VariantPlan]
    plan_problem: str
    compatibility: list[dict[str, Any]]
    manifest_yaml: str
    document: dict[str, Any]
    document_json: str
    notes: list[str] = field(default_factory=list)


def parsed_spec(spec: dict[str, Any]) -> tuple[PoolBenchmarkSpec | None, str]:
    """The spec as the model reads it, or why it cannot be read. A provider's limits were filled in when
    the spec was written out; they are dropped here so the provider fills them again."""
    data = json.loads(json.dumps(spec))
    postgres = data.get("postgres")
    if isinstance(postgres, dict) and postgres.get("provider"):
        postgres.pop("maxConnections", None)
        postgres.pop("superuserReservedConnections", None)
    try:
        return PoolBenchmarkSpec.model_validate(data), ""
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return None, f"spec.{where}: {first['msg']}" if where else str(first["msg"])


def _steps(status: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(v.get("name", ""), s) for v in status.get("variants") or [] for s in v.get("steps") or []]


def _label(variant: str, step: dict[str, Any], many: bool) -> str:
    replicas = f"{step.get('replicas')}"
    if step.get("rolloutFrom") is not None:
        replicas = f"{step['rolloutFrom']}→{step['replicas']}"
    return f"{variant}·{replicas}" if many else replicas


def step_rows(status: dict[str, Any]) -> list[StepRow]:
    many = len(status.get("variants") or []) > 1
    rows = []
    for variant, step in _steps(status):
        errors = step.get("errors") or {}
        pooler = step.get("pooler")
        rows.append(
            StepRow(
                variant=variant,
                label=_label(variant, step, many),
                outcome=str(step.get("outcome") or "–"),
                cells=[(path, number(step_value(step, path))) for _, path, _ in STEP_COLUMNS],
                reason=str(step.get("reason") or ""),
                first_error=str(step.get("firstError") or ""),
                first_error_class=str(step.get("firstErrorClass") or ""),
                errors_by_class=[(k, int(errors[k])) for k in ERROR_CLASSES if errors.get(k)],
                ghosts=parse_ghosts(step.get("ghostConnections")),
                pooler=[
                    Fact("Predicted clients at the poolers", number(pooler.get("predictedClientPeak"))),
                    Fact("Clients the poolers accept", number(pooler.get("clientCapacity"))),
                    Fact("Server connections the poolers open at most", number(pooler.get("serverCapacity"))),
                    Fact("Predicted at the poolers", str(pooler.get("predictedOutcome") or "–")),
                    Fact("Peak clients at the poolers", number(pooler.get("clientPeakConnections"))),
                    Fact("Peak clients waiting", number(pooler.get("waitingPeak"))),
                    Fact("Longest wait (ms)", number(pooler.get("maxWaitMs"))),
                ]
                if pooler
                else [],
            )
        )
    return rows


def server_facts(spec: PoolBenchmarkSpec | None, raw_spec: dict[str, Any], status: dict[str, Any]) -> list[Fact]:
    """The server's limits, each with where it came from."""
    facts = []
    measured = status.get("maxConnections")
    if spec is None:
        postgres = raw_spec.get("postgres") or {}
        return [
            Fact("max_connections", number(postgres.get("maxConnections", measured)), "spec.postgres.maxConnections"),
        ]
    pg = spec.postgres
    role = spec.workload.role
    if spec.database is not None:
        source = "read from the server the benchmark measured (spec.database)"
    elif pg.provider is not None:
        source = pg.provider.source()
    elif "max_connections" in pg.model_fields_set:
        source = "spec.postgres.maxConnections"
    else:
        source = "spec.postgres.maxConnections (the default)"
    facts.append(Fact("max_connections", number(pg.max_connections), source))
    if measured and measured != pg.max_connections:
        facts.append(Fact("max_connections during the run", number(measured), "status.maxConnections"))
    reserved_source = (
        f"{pg.provider.rule.title}'s default"
        if pg.provider is not None
        else "spec.postgres.superuserReservedConnections"
        + ("" if "superuser_reserved_connections" in pg.model_fields_set else " (the default)")
    )
    facts.append(Fact("superuser_reserved_connections", number(pg.superuser_reserved_connections), reserved_source))
    facts.append(
        Fact(
            f"Slots the workload's role ({role}) cannot take",
            number(pg.reserved_for(role)),
            pg.reserved_text(role) or f"none: the {role} role may take every slot",
        )
    )
    usable = sorted({int(s["usableConnections"]) for _, s in _steps(status) if s.get("usableConnections")})
    if usable:
        facts.append(
            Fact(
                "Usable by the workload during the run",
                ", ".join(number(u) for u in usable),
                "max_connections − the reserved slots − the benchmark's own monitor (status, per step)",
            )
        )
    facts.append(
        Fact(
            "Usable in production",
            number(pg.usable_slots(role)),
            "max_connections − the reserved slots (no benchmark monitor there)",
        )
    )
    facts.extend(Fact(name, value, "spec.postgres.settings") for name, value in sorted(pg.settings.items()))
    for variant in spec.effective_variants():
        if variant.pooler is not None:
            p = variant.pooler
            facts.append(
                Fact(
                    f"{variant.name}: clients the poolers accept",
                    number(p.max_client_conn * p.replicas),
                    f"maxClientConn {p.max_client_conn} × {p.replicas} instances (one each is the monitor's)",
                )
            )
            facts.append(
                Fact(
                    f"{variant.name}: server connections the poolers open at most",
                    number(p.server_connections() * p.replicas),
                    f"{p.replicas} × (defaultPoolSize {p.default_pool_size} + reservePoolSize {p.reserve_pool_size})",
                )
            )
    return facts


def configuration_facts(spec: PoolBenchmarkSpec | None, raw_spec: dict[str, Any]) -> list[Fact]:
    if spec is None:
        return [Fact("spec", "could not be read: see the manifest below")]
    wl = spec.workload
    engine = wl.engine
    pool: str = engine.pool_class
    if engine.pool_class == "QueuePool":
        pool += f", poolSize {engine.effective_pool_size()}, maxOverflow {engine.effective_max_overflow()}"
    if engine.pool_timeout is not None:
        pool += f", poolTimeout {engine.pool_timeout:g} s"
    work = (
        f"{wl.duration_seconds:g} s per thread"
        if wl.duration_seconds is not None
        else f"{wl.effective_iterations()} iterations per thread"
    )
    statements = wl.transaction_statements()
    facts = [
        Fact("Pool", pool, "spec.workload.engine"),
        Fact("Threads per process", number(wl.threads), "spec.workload.threads"),
        Fact("Processes per replica", number(wl.processes), "spec.workload.processes"),
        Fact("Driver", f"{wl.driver} (options: {wl.driver_options})", "spec.workload.driver"),
        Fact("Steps", spec.describe_steps(), "spec.steps"),
        Fact("Work", work, "spec.workload.iterations / durationSeconds"),
        Fact("Held open after the work", f"{wl.hold_seconds:g} s", "spec.workload.holdSeconds"),
        Fact("Role", wl.role, "spec.workload.role"),
        Fact("On error", wl.on_error, "spec.workload.onError"),
        Fact(
            "Statement" if len(statements) == 1 else "Transaction",
            " ; ".join(statements),
            "spec.workload.transaction" if wl.transaction is not None else "spec.workload.statement",
        ),
    ]
    if wl.on_connect:
        facts.append(Fact("On connect", " ; ".join(wl.on_connect), "spec.workload.onConnect"))
    if spec.rollout is not None:
        facts.append(Fact("Rolling update", f"maxSurge {spec.rollout.max_surge}", "spec.rollout"))
    facts.append(Fact("Sampling", f"every {spec.sampling.interval_ms} ms", "spec.sampling.intervalMs"))
    return facts


def variant_facts(spec: PoolBenchmarkSpec | None) -> list[Fact]:
    if spec is None:
        return []
    facts = []
    for v in spec.effective_variants():
        engine = v.engine or spec.workload.engine
        pool = engine.pool_class + (
            f" {engine.effective_pool_size()}+{engine.effective_max_overflow()}"
            if engine.pool_class == "QueuePool"
            else ""
        )
        facts.append(
            Fact(
                v.name,
                (v.pooler.label() if v.pooler else "direct") + f" · {pool}",
                "spec.variants" * bool(spec.variants),
            )
        )
    return facts


def plan_target(spec: PoolBenchmarkSpec) -> int | None:
    counts = spec.step_counts()
    return max(counts) if counts else None


def variant_plans(spec: PoolBenchmarkSpec | None) -> list[VariantPlan]:
    """What ``poolbench plan --target-replicas N`` says for each variant, N the largest step."""
    if spec is None:
        return []
    target = plan_target(spec)
    plans = []
    for v in spec.effective_variants():
        p = plan(spec.for_variant(v), target, v.pooler)
        head = v.name + (f" (through {p.pooler.label()})" if p.pooler is not None else "")
        facts = [
            Fact("Connections per replica at most", number(p.per_replica_peak)),
            Fact("Kept idle per replica (ghosts)", number(p.per_replica_idle)),
            Fact("Usable connections (production)", number(p.usable_connections)),
            Fact("Max safe replicas", number(p.max_safe_replicas)),
            Fact(
                f"Max safe during a rolling update (maxSurge {p.max_surge})", number(p.max_safe_replicas_during_rollout)
            ),
        ]
        if p.max_replicas_without_waiting is not None:
            facts.append(Fact("Replicas before clients wait at the pooler", number(p.max_replicas_without_waiting)))
        if target is not None:
            facts.append(Fact("Target replicas (the largest step)", number(target)))
        plans.append(VariantPlan(v.name, head, facts, list(p.notes), [r.text for r in p.recommendations]))
    return plans


def build_charts(document: dict[str, Any], spec: PoolBenchmarkSpec | None) -> list[Chart]:
    status = full_status(document.get("status"))
    steps = _steps(status)
    many = len(status.get("variants") or []) > 1
    labels = [_label(v, s, many) for v, s in steps]
    max_connections = int(status.get("maxConnections") or (spec.postgres.max_connections if spec else 0))
    usable_values = [int(s["usableConnections"]) for _, s in steps if s.get("usableConnections")]
    usable = usable_values[0] if usable_values else None
    limit_lines = [("max_connections", float(max_connections), MAX_CONNECTIONS_COLOR)]
    if usable is not None:
        limit_lines.append(("usable", float(usable), USABLE_COLOR))
    charts = []
    timeline = document.get("timeline")
    if timeline is not None:  # a run's results, even one whose every read failed (the chart says so)
        charts.append(
            connections_over_time(timeline, list(document.get("serverTimeline") or []), labels, max_connections, usable)
        )
    else:
        chart = grouped_bars(
            "connections-by-step",
            "Peak connections by state, per step",
            "The peak of each state per step, from the status.",
            labels,
            [
                Series("active", [(s.get("peakByState") or {}).get("active", 0) for _, s in steps]),
                Series("idle", [(s.get("peakByState") or {}).get("idle", 0) for _, s in steps]),
                Series(
                    "idle in transaction",
                    [(s.get("peakByState") or {}).get("idleInTransaction", 0) for _, s in steps],
                ),
            ],
            limits=limit_lines,
        )
        chart.note = (
            "This document has no timeline (a cluster resource's status holds per-step figures only):"
            " the peaks by state per step stand in for connections over time."
        )
        charts.append(chart)
    charts.append(
        grouped_bars(
            "peaks-per-step",
            "Predicted and measured peak, per step",
            "What the pool arithmetic predicted beside the measured peak of open connections.",
            labels,
            [
                Series("predicted peak", [s.get("predictedPeak") for _, s in steps]),
                Series("measured peak", [s.get("peakConnections") for _, s in steps]),
                Series("ghosts at the end", [s.get("idleAtEnd") for _, s in steps]),
            ],
            limits=limit_lines,
        )
    )
    for key, title, what in (
        ("latencyMs", "Statement latency per step", "From the checkout request to the commit"),
        ("checkoutWaitMs", "Checkout wait per step", "Waiting for a connection from the pool, connecting included"),
    ):
        charts.append(
            grouped_bars(
                f"{key}-per-step",
                title,
                f"{what}: p50, p95 and p99 in milliseconds.",
                labels,
                [Series(p, [(s.get(key) or {}).get(p) for _, s in steps]) for p in ("p50", "p95", "p99")],
                unit=" ms",
            )
        )
    variants = status.get("variants") or []
    names = [v.get("name", "") for v in variants]
    charts.append(
        grouped_bars(
            "variants-compared",
            "The variants compared: replicas",
            "Per variant: the largest replica count that passed, beside what the arithmetic predicted.",
            names,
            [
                Series("max safe replicas", [(v.get("verdict") or {}).get("maxSafeReplicas") for v in variants]),
                Series(
                    "predicted max safe replicas",
                    [(v.get("verdict") or {}).get("predictedMaxSafeReplicas") for v in variants],
                ),
            ],
        )
    )
    charts.append(
        grouped_bars(
            "variants-connections",
            "The variants compared: server connections",
            "Per variant: the highest peak of open connections at the server and the most ghosts left at the"
            " end of a step, against the server's limits.",
            names,
            [
                Series(
                    "highest peak connections",
                    [max((s.get("peakConnections") or 0 for s in v.get("steps") or []), default=0) for v in variants],
                ),
                Series(
                    "most ghosts at the end",
                    [max((s.get("idleAtEnd") or 0 for s in v.get("steps") or []), default=0) for v in variants],
                ),
            ],
            limits=limit_lines,
        )
    )
    return charts


def manifest(document: dict[str, Any]) -> str:
    """The PoolBenchmark to run again: apiVersion, kind, metadata and spec, as YAML."""
    metadata = document.get("metadata") or {}
    kept = {k: metadata[k] for k in ("name", "namespace", "labels") if k in metadata}
    return yaml.safe_dump(
        {
            "apiVersion": document.get("apiVersion", "poolbench.dev/v1alpha1"),
            "kind": document.get("kind", "PoolBenchmark"),
            "metadata": kept,
            "spec": document.get("spec") or {},
        },
        sort_keys=False,
        allow_unicode=True,
    )


def report_view(document: dict[str, Any]) -> ReportView:
    status = full_status(document.get("status"))
    raw_spec = document.get("spec") or {}
    spec, problem = parsed_spec(raw_spec)
    name = str((document.get("metadata") or {}).get("name", ""))
    verdict = status.get("verdict") or {}
    variants = status.get("variants") or []
    first_errors = [
        (v.get("name", ""), str(s.get("firstErrorClass") or ""), str(s["firstError"]))
        for v in variants
        for s in (v.get("steps") or [])[:50]
        if s.get("firstError")
    ]
    return ReportView(
        title=f"PoolBenchmark {name}",
        name=name,
        kind=str(document.get("kind", "PoolBenchmark")),
        phase=str(status.get("phase", "")),
        updated_at=str(status.get("updatedAt") or ""),
        verdict=str(verdict.get("summary") or status.get("message") or "No verdict in this document."),
        variant_verdicts=[
            (v.get("name", ""), str((v.get("verdict") or {}).get("summary", "")))
            for v in variants
            if len(variants) > 1 or v.get("name") != DIRECT
        ],
        comparison=str(status.get("comparison") or ""),
        first_errors=first_errors[:10],
        server=server_facts(spec, raw_spec, status),
        configuration=configuration_facts(spec, raw_spec),
        variants=variant_facts(spec),
        columns=list(STEP_COLUMNS),
        rows=step_rows(status),
        charts=build_charts(document, spec),
        plans=variant_plans(spec),
        plan_problem=problem,
        compatibility=[
            {"variant": v.get("name", ""), **v["compatibility"]} for v in variants if v.get("compatibility")
        ],
        manifest_yaml=manifest(document),
        document=document,
        document_json=json.dumps(document, indent=2, ensure_ascii=False),
    )
