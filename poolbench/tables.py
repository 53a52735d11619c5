"""A benchmark's results as rich tables: each variant's steps, the variants compared, the verdicts and the
compatibility findings. What ``poolbench run`` prints at its end and ``kubectl poolbench status`` prints of a
live resource, from the same status document (``BenchmarkStatus.to_json()``, the resource's ``status``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


def results_table(status: dict[str, Any], variant: dict[str, Any]) -> Table:
    """One variant's steps, titled with the variant when the status compares variants. A pooled variant
    adds the pooler's side: clients at the pooler (predicted and measured) and the clients that waited."""
    from rich.table import Table
    from rich.text import Text

    steps = variant["steps"]
    pooled = any(s.get("pooler") for s in steps)
    title = f"PoolBenchmark results (max_connections {status['maxConnections']})"
    if status.get("comparison"):
        pooler = variant.get("pooler")
        how = (
            f"through PgBouncer ({pooler['poolMode']} mode, pool {pooler['defaultPoolSize']}"
            + (f"+{pooler['reservePoolSize']}" if pooler["reservePoolSize"] else "")
            + f", max_client_conn {pooler['maxClientConn']}"
            + (f", {pooler['replicas']} instances" if pooler["replicas"] > 1 else "")
            + ")"
            if pooler
            else "direct"
        )
        title = (
            f"variant {variant['name']}: {how}, {variant['engine']['poolClass']} (max_connections"
            f" {status['maxConnections']})"
        )
    table = Table(title=title)
    columns = ["step", "replicas", "predicted peak", "measured peak"]
    if pooled:
        columns += ["predicted clients", "clients", "waiting", "max wait"]
    columns += ["ghosts", "errors", "gaps", "stmt/s", "p95 latency", "p95 wait", "outcome"]
    # One error class per line, and the errors and outcome never wrapped: a squeezed table narrows
    # the other columns (their headers and "316 ms" wrap at spaces) instead of cutting a class name.
    errors_of = [[f"{k} {v}" for k, v in s["errors"].items() if v] or ["0"] for s in steps]
    for col in columns:
        table.add_column(
            col, justify="right" if col not in ("errors", "outcome") else "left", no_wrap=col in ("errors", "outcome")
        )
    for i, (s, error_lines) in enumerate(zip(steps, errors_of, strict=True), start=1):
        errors = "\n".join(error_lines)
        reads = s["samples"] + s["sampleGaps"]
        gaps = f"{s['sampleGaps']}/{reads}" if s["sampleGaps"] else "0"
        at_pooler = s.get("pooler") or {}
        if at_pooler.get("sampleGaps"):
            gaps += f" (pooler {at_pooler['sampleGaps']})"
        label = (s["outcome"] or "-") + (" (timeout)" if s["timedOut"] else "")
        label += f"\n({s['leftoverBackends']} leftovers)" if s["leftoverBackends"] else ""
        style = {"Passed": "green", "Inconclusive": "yellow"}.get(s["outcome"] or "", "red")
        peak = f"≤ {s['predictedPeak']}" if at_pooler else str(s["predictedPeak"])
        rolled = s.get("rolloutFrom")  # a measured rolling update: the old replicas and the surge pods beside them
        replicas = f"{rolled} + {s['replicas'] - rolled} surge" if rolled is not None else str(s["replicas"])
        row = [str(i), replicas, peak, peak_cell(s)]
        if pooled:
            expected = at_pooler.get("predictedOutcome") or "?"  # fits, waits or fails, by the placement rule
            row += [
                f"{at_pooler.get('predictedClientPeak', 0)} ({expected})",
                str(at_pooler.get("clientPeakConnections", 0)) + pools_line(s),
                str(at_pooler.get("waitingPeak", 0)),
                f"{at_pooler.get('maxWaitMs', 0.0):.0f} ms",
            ]
        ghosts = str(s["idleAtEnd"])
        if s.get("serverGhosts") is not None and s["serverGhosts"] != s["idleAtEnd"]:
            ghosts += f"\n(log {s['serverGhosts']})"
        row += [
            ghosts,
            errors,
            gaps,
            f"{s['throughput']:.0f}",
            f"{s['latencyMs']['p95']:g} ms",
            f"{s['checkoutWaitMs']['p95']:g} ms",
        ]
        table.add_row(*row, Text(label, style=style))
    return table


def peak_cell(step: dict[str, Any]) -> str:
    """The step's peak and where it comes from: the server's log (exact), with the reads' peak under it
    when they saw less; or the reads alone. Under it, a direct step's third witness: the pools' own count."""
    peak = step["peakConnections"]
    if step.get("peakSource") != "serverLog":
        cell = f"{peak} (sampled)"
    else:
        sampled = step.get("sampledPeakConnections", peak)
        cell = f"{peak} (log)" + (f"\n{sampled} sampled" if sampled != peak else "")
    if not step.get("pooler"):  # pooled, the pools count clients at the pooler: beside the pooler's clients
        cell += pools_line(step)
    return cell


def pools_line(step: dict[str, Any]) -> str:
    """The pools' own count of their connections on a line of its own ("≤": an upper bound), or nothing."""
    client = step.get("clientPeakConnections")
    if client is None:
        return ""
    return f"\n{'' if step.get('clientPeakExact') else '≤ '}{client} pools"


def stopping_step(verdict: dict[str, Any], steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The step the verdict's firstFailingReplicas names (the verdict's own rule), as JSON."""
    from .core.results import StepResult, Verdict
    from .core.verdict import first_failing_step

    parsed = [StepResult.model_validate(s) for s in steps]
    step = first_failing_step(Verdict.model_validate(verdict or {}), parsed)
    return steps[parsed.index(step)] if step is not None else None


def short_cause(step: dict[str, Any]) -> str:
    """What failed a step, in a word for the comparison's column (the core's ``step_cause``)."""
    from .core.results import StepResult
    from .core.verdict import step_cause

    return step_cause(StepResult.model_validate(step))


def comparison_table(status: dict[str, Any]) -> Table:
    """The variants side by side: how far each scaled, what the server saw, what callers felt."""
    from rich.table import Table

    from .core.spec import PoolerSpec

    table = Table(title="Variants compared")
    for col in (
        "variant",
        "connects",
        "max safe replicas",
        "first failing",
        "peak server backends",
        "p95 latency at largest passing step",
    ):
        table.add_column(col, justify="left" if col in ("variant", "connects", "first failing") else "right")
    for v in status["variants"]:
        verdict = v.get("verdict") or {}
        steps = v["steps"]
        passing = [s for s in steps if s["outcome"] == "Passed" and s.get("rolloutFrom") is None]  # steps at rest
        largest = max(passing, key=lambda s: s["replicas"]) if passing else None
        failing = stopping_step(verdict, steps)
        unseen = next(
            (s for s in steps if s["outcome"] not in ("Passed", "Failed") and s.get("rolloutFrom") is None), None
        )
        pooler = v.get("pooler")
        # The pooler as its variant's verdict names it: mode, pool (+ reserve) and instances.
        connects = (PoolerSpec.model_validate(pooler).label() if pooler else "direct") + f", {v['engine']['poolClass']}"
        if failing is not None:
            first = f"{failing['replicas']} ({short_cause(failing)})"
        else:
            first = f"- ({unseen['replicas']} inconclusive)" if unseen is not None else "-"
        safe = verdict.get("maxSafeReplicas")
        table.add_row(
            v["name"],
            connects,
            "-" if safe is None else str(safe),
            first,
            str(max((s["peakConnections"] for s in steps), default=0)),
            f"{largest['latencyMs']['p95']:g} ms at {largest['replicas']}" if largest else "-",
        )
    return table


def print_results(out_console: Console, status: dict[str, Any]) -> None:
    """The results table, verdict and first error of each variant, then the comparison of the variants."""
    from rich.markup import escape

    for variant in status["variants"]:
        out_console.print(results_table(status, variant))
        verdict = variant.get("verdict") or {}
        out_console.print(f"[bold]Verdict:[/] {escape(verdict.get('summary', status['message']))}", highlight=False)
        failing = stopping_step(verdict, variant["steps"])
        if failing is not None and failing.get("firstError"):
            out_console.print(
                f"[bold]First error[/] ({failing['firstErrorClass']}): {escape(failing['firstError'])}", highlight=False
            )
    if status["comparison"]:
        out_console.print(comparison_table(status))
        out_console.print(f"[bold]Comparison:[/] {escape(status['comparison'])}", highlight=False)
    for line in compatibility_lines(status):
        out_console.print(escape(line), highlight=False)


def compatibility_lines(status: dict[str, Any]) -> list[str]:
    """Each probed variant's compatibility findings (kind, the statement, the evidence, the fix) and notes."""
    lines = []
    for variant in status["variants"]:
        compatibility = variant.get("compatibility")
        if not compatibility:
            continue
        found = compatibility["findings"]
        mode = f"{compatibility['poolMode']} mode"
        if not found:
            lines.append(f"Compatibility of {variant['name']} ({mode}): the probe found nothing")
        else:
            lines.append(
                f"Compatibility of {variant['name']} ({mode}): {len(found)} finding{'s' if len(found) > 1 else ''}"
            )
        for finding in found:
            statement = f" {finding['statement']!r}" if finding["statement"] else " (the driver's own)"
            lines.append(f"  {finding['kind']}:{statement}: {finding['evidence']}")
            lines.append(f"    fix: {finding['fix']}")
        lines += [f"  note: {note}" for note in compatibility["notes"]]
    return lines
