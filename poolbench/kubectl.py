"""``kubectl poolbench``: the PoolBenchmarks in a cluster, read with the user's own kubeconfig.

``status NAME`` (the benchmark, its server, each variant's steps and the comparison, as ``poolbench run``
prints them; ``-o json|yaml`` the resource's status as it is), ``list`` (``-A`` every namespace), ``watch
NAME`` (live progress until it ends: exit 0 when it passed, 1 when it did not, 130 on Ctrl-C) and ``report
NAME -o FILE.html`` (the HTML report of the live resource). kubectl runs ``kubectl-poolbench`` from PATH
for ``kubectl poolbench``, and ``kubectl_complete-poolbench`` to complete its words (subcommands and
benchmark names).

Exit codes: 0 done, 1 the cluster or the benchmark said no (one line, no traceback), 2 bad arguments,
130 interrupted. Needs the ``kubectl`` extra (kubernetes, rich, and Jinja2 for the report) and says so
when it is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .extras import MissingExtra, report_unexpected, require

if TYPE_CHECKING:
    from rich.console import Console

GROUP, VERSION, PLURAL = "poolbench.dev", "v1alpha1", "poolbenchmarks"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: Phases after which nothing more is measured, and of those the ones that passed (``kubectl wait``'s Ready).
FINISHED_PHASES = ("Completed", "BoundaryFound", "Failed", "Invalid")
PASSED_PHASES = ("Completed", "BoundaryFound")
#: How often ``watch`` reads the resource again.
WATCH_POLL_SECONDS = 1.0
SUBCOMMANDS = ("status", "list", "watch", "report")
#: kubectl's completion directive: complete nothing but the words given (no file names).
NO_FILE_COMPLETION = ":4"
#: ... and the shell's own file names (report's -o).
FILE_COMPLETION = ":0"


class PluginError(Exception):
    """The cluster or the benchmark said no (no kubeconfig, unreachable, forbidden, not found): one line."""


# -- the cluster ---------------------------------------------------------------------------------


@dataclass
class Cluster:
    """The custom objects API of the chosen kubeconfig context, and the namespace to read in."""

    api: Any
    namespace: str

    def get(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self._call(
            f"poolbenchmark {self.namespace}/{name}", "get_namespaced_custom_object", self.namespace, PLURAL, name
        )
        return found

    def list(self, all_namespaces: bool = False) -> list[dict[str, Any]]:
        if all_namespaces:
            found = self._call("poolbenchmarks", "list_cluster_custom_object", PLURAL)
        else:
            found = self._call(
                f"poolbenchmarks in namespace {self.namespace}", "list_namespaced_custom_object", self.namespace, PLURAL
            )
        items: list[dict[str, Any]] = found.get("items") or []
        return sorted(items, key=lambda r: (r["metadata"].get("namespace", ""), r["metadata"]["name"]))

    def with_results(self, resource: dict[str, Any]) -> dict[str, Any]:
        """``resource`` with its whole status: the summary joined with every finished step's detail from
        its results ConfigMap (``status.resultsConfigMap``); the summary alone when the ConfigMap is
        gone or may not be read."""
        from kubernetes import client

        from .core.results import RESULTS_KEY, join_saved
        from .local.kube import REQUEST_TIMEOUT_SECONDS

        status = resource.get("status")
        if not isinstance(status, dict) or not status.get("resultsConfigMap"):
            return resource
        name = str(status["resultsConfigMap"])
        namespace = resource["metadata"].get("namespace", self.namespace)
        try:
            config_map = client.CoreV1Api(self.api).read_namespaced_config_map(
                name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
        except Exception:  # noqa: BLE001 - not there, or not readable: the summary is still the status
            return resource
        return {**resource, "status": join_saved(status, (config_map.data or {}).get(RESULTS_KEY))}

    def _call(self, what: str, method: str, *args: str) -> Any:
        """One custom objects API call with a timeout (an unreachable server fails, not hangs); its
        refusal as one line."""
        from kubernetes import client

        from .local.kube import REQUEST_TIMEOUT_SECONDS, api_error

        call = getattr(client.CustomObjectsApi(self.api), method)
        try:
            return call(GROUP, VERSION, *args, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        except Exception as err:  # noqa: BLE001 - ApiException, or urllib3's for an unreachable API server
            raise PluginError(str(api_error(err, what))) from None

    def close(self) -> None:
        self.api.close()


def connect(args: argparse.Namespace) -> Cluster:
    """The cluster of ``--kubeconfig``/``--context`` (else $KUBECONFIG and the current context), in
    ``--namespace`` or the context's namespace."""
    require("kubectl", "kubernetes", "kubectl poolbench")
    require("kubectl", "rich", "kubectl poolbench")
    from .local.kube import KubeError, open_client

    try:
        api, namespace = open_client(args.kubeconfig, args.context)
    except KubeError as err:
        raise PluginError(str(err)) from None
    return Cluster(api, args.namespace or namespace)


# -- what a user reads ---------------------------------------------------------------------------


def make_console() -> Console:
    """Colours on a terminal; plain text (no escape codes at all) with NO_COLOR or when stdout is not one,
    wide enough for the step tables in a file or a CI log."""
    from rich.console import Console

    terminal = sys.stdout.isatty()
    plain = bool(os.environ.get("NO_COLOR")) or not terminal
    return Console(
        color_system=None if plain else "auto",
        width=None if terminal else 200,
        soft_wrap=not terminal,
        highlight=False,
    )


def full_status(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource's status with every field the tables read (a field the operator left out at its
    default, or has not written yet, at that default); keys this version does not know are kept."""
    from .core.benchmark import full_status as with_defaults

    return with_defaults(resource.get("status"))


def verdict_style(status: dict[str, Any]) -> str:
    """Green: every step passed (or a search found its boundary); yellow: still measuring, or a step nobody
    could judge; red: a step failed, or the benchmark could not run."""
    phase = status.get("phase") or "Pending"
    if phase in PASSED_PHASES:
        return "green"
    if phase not in FINISHED_PHASES:
        return "yellow"
    steps = [s for v in status.get("variants") or [] for s in v.get("steps") or []]
    if phase == "Failed" and any(s.get("outcome") == "Inconclusive" for s in steps) and status.get("verdict"):
        return "yellow"
    return "red"


def verdict_words(status: dict[str, Any]) -> str:
    """The benchmark's verdict in a sentence: the variants compared, else the verdict's summary, else the
    message (an environment that failed, an invalid spec)."""
    return str(status.get("comparison") or (status.get("verdict") or {}).get("summary") or status.get("message") or "")


def short_verdict(status: dict[str, Any]) -> str:
    """A few words for ``list``: how far it got, how many replicas are safe, what broke."""
    from .core.words import clipped

    phase = status.get("phase") or "Pending"
    if phase not in FINISHED_PHASES:
        if phase == "Pending":
            return "not started"
        return f"step {status.get('progress') or '-'}, {status.get('liveConnections', 0)} connections now"
    if phase == "Invalid":
        return "invalid spec: " + clipped(status.get("message") or "", 60)
    variants = status.get("variants") or []
    if len(variants) > 1:
        return "; ".join(f"{v['name']} {safe_words(v.get('verdict'))}" for v in variants)
    verdict = status.get("verdict") or (variants[0].get("verdict") if variants else None)
    if verdict is None:
        return "could not run: " + clipped(status.get("message") or "", 60)
    return safe_words(verdict)


def safe_words(verdict: dict[str, Any] | None) -> str:
    """'safe up to 4, fails at 5', or 'no safe count' for a verdict that claims nothing."""
    if not verdict:
        return "not measured"
    safe, failing = verdict.get("maxSafeReplicas"), verdict.get("firstFailingReplicas")
    words = "no safe count" if safe is None else f"safe up to {safe}"
    return words + (f", fails at {failing}" if failing is not None else "")


def server_line(resource: dict[str, Any], status: dict[str, Any]) -> str:
    """max_connections, the slots the workload's role can never take and the slots it can use."""
    from pydantic import ValidationError

    from .core.budget import usable_connections
    from .core.spec import MONITOR_CONNECTIONS, PoolBenchmarkSpec

    database = status.get("database")
    if database:  # the user's own server, its limits read live
        reserved = database.get("superuserReservedConnections", 0) + database.get("reservedConnections", 0)
        return (
            f"max_connections {database.get('maxConnections')} · reserved {reserved} · usable"
            f" {database.get('usableForNormalRole')} for a normal role (read live from"
            f" {database.get('host')}:{database.get('port')}/{database.get('dbname')})"
        )
    try:
        spec = PoolBenchmarkSpec.model_validate(resource.get("spec") or {})
    except ValidationError:
        return f"max_connections {status.get('maxConnections') or '?'} (the spec does not parse: see the message)"
    role = spec.workload.role
    why = spec.postgres.reserved_text(role)
    return (
        f"max_connections {status.get('maxConnections') or spec.postgres.max_connections}"
        f" · reserved {spec.postgres.reserved_for(role)}"
        + (f" ({why})" if why else "")
        + f" · usable {usable_connections(spec)} for role {role}"
        f" (the benchmark's monitor holds {MONITOR_CONNECTIONS})"
    )


def print_status(console: Console, resource: dict[str, Any]) -> None:
    """The benchmark, its server, each variant's steps and verdict, the comparison and an own app's answer."""
    from rich.markup import escape

    from .tables import print_results

    status = full_status(resource)
    meta = resource["metadata"]
    phase = status.get("phase") or "Pending"
    style = verdict_style(status)
    console.rule(f"PoolBenchmark {escape(meta.get('namespace', ''))}/{escape(meta['name'])}")
    console.print(
        f"[bold]phase:[/] [{style}]{phase}[/] · step {escape(status.get('progress') or '-')}"
        f" · replicas {status.get('replicas', 0)} · peak connections {status.get('peakConnections', 0)}"
        f" · live connections {status.get('liveConnections', 0)} · failures {status.get('failures', 0)}"
        + (f" · measuring variant {escape(status['currentVariant'])}" if status.get("currentVariant") else "")
    )
    verdict = verdict_words(status) or "no verdict yet"
    console.print(f"[bold]verdict:[/] [{style}]{escape(verdict)}[/]")
    console.print(f"[bold]server:[/] {escape(server_line(resource, status))}")
    variants = status.get("variants") or []
    if any(v.get("steps") for v in variants):
        console.print()
        try:
            print_results(console, status)
        except (KeyError, TypeError, ValueError) as err:  # a status another poolbench version wrote
            console.print(f"[yellow]the steps could not be shown ({escape(repr(err))}): -o yaml shows them whole[/]")
    if status.get("target"):
        print_own_app(console, status["target"])


def print_own_app(console: Console, target: dict[str, Any]) -> None:
    """The user's own Deployment: what was watched or scaled, the answer, and whether it was put back."""
    from rich.markup import escape

    console.print()
    console.print(f"[bold]own app:[/] deployment {escape(str(target.get('deployment')))} ({target.get('mode')})")
    observation = target.get("observation") or {}
    steps = target.get("steps") or []
    if steps:
        observation = steps[-1].get("observation") or {}
        counts = ", ".join(str(s.get("replicas")) for s in steps)
        console.print(f"  replica counts held: {counts}")
    if observation:
        console.print(
            f"  per pod peak {observation.get('perPodPeak', 0)} · app peak {observation.get('appPeak', 0)}"
            f" · other tenants' peak {observation.get('othersPeak', 0)}"
            f" · least headroom {observation.get('minHeadroom', '?')}"
        )
    if target.get("answerWords"):
        console.print(f"  [bold]answer:[/] {escape(target['answerWords'])}")
    if target.get("mode") == "Step":
        restored = "put back" if target.get("restored") else "NOT put back"
        console.print(f"  replicas {restored} to {target.get('originalReplicas')}")
    for warning in target.get("warnings") or []:
        console.print(f"  [yellow]warning:[/] {escape(warning)}")


# -- the commands --------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    cluster = connect(args)
    try:
        resource = cluster.get(args.name)
        # -o json|yaml: the resource's status exactly; the tables: with every step's detail.
        shown = resource if args.output in ("json", "yaml") else cluster.with_results(resource)
    finally:
        cluster.close()
    status = resource.get("status") or {}
    if args.output == "json":
        sys.stdout.write(json.dumps(status, indent=2) + "\n")
    elif args.output == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(status, sort_keys=False, allow_unicode=True))
    else:
        print_status(make_console(), shown)
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    cluster = connect(args)  # first: it names a missing extra
    from rich.markup import escape
    from rich.table import Table

    try:
        found = cluster.list(args.all_namespaces)
    finally:
        cluster.close()
    console = make_console()
    if not found:
        where = "any namespace" if args.all_namespaces else f"namespace {cluster.namespace}"
        console.print(f"no poolbenchmarks in {where}")
        return EXIT_OK
    table = Table(box=None, pad_edge=False)
    columns = (["NAMESPACE"] if args.all_namespaces else []) + ["NAME", "PHASE", "STEP", "VERDICT"]
    for column in columns:
        table.add_column(column, no_wrap=column != "VERDICT")
    for resource in found:
        status = resource.get("status") or {}
        phase = status.get("phase") or "Pending"
        row = [resource["metadata"].get("namespace", "")] if args.all_namespaces else []
        row += [resource["metadata"]["name"], phase, status.get("progress") or "-", short_verdict(status)]
        style = verdict_style(status)
        table.add_row(*(escape(cell) for cell in row[:-3]), f"[{style}]{phase}[/]", *(escape(c) for c in row[-2:]))
    console.print(table)
    return EXIT_OK


def progress_text(resource: dict[str, Any]) -> str:
    """One line of a benchmark's progress: its phase, step, replicas and connections now."""
    status = resource.get("status") or {}
    variant = f"{status['currentVariant']}: " if status.get("currentVariant") else ""
    return (
        f"{resource['metadata']['name']} {status.get('phase') or 'Pending'} · {variant}step"
        f" {status.get('progress') or '-'} · {status.get('replicas', 0)} replicas · live connections"
        f" {status.get('liveConnections', 0)} (peak {status.get('peakConnections', 0)}) · failures"
        f" {status.get('failures', 0)}"
    )


def cmd_watch(args: argparse.Namespace) -> int:
    """Read the resource every second until its phase is a final one; 0 when it passed."""
    cluster = connect(args)  # first: it names a missing extra
    from rich.live import Live
    from rich.markup import escape
    from rich.text import Text

    console = make_console()
    try:
        if console.is_terminal:
            with Live(Text("reading…"), console=console, transient=True, refresh_per_second=4) as live:
                resource = follow(cluster, args.name, lambda line: live.update(Text(line)))
        else:
            resource = follow(cluster, args.name, lambda line: console.print(line, markup=False))
    finally:
        cluster.close()
    status = resource.get("status") or {}
    phase = status["phase"]
    verdict = verdict_words(status)
    console.print(f"[bold]{escape(args.name)} {phase}:[/] [{verdict_style(status)}]{escape(verdict)}[/]")
    return EXIT_OK if phase in PASSED_PHASES else EXIT_FAILED


def follow(cluster: Cluster, name: str, show: Callable[[str], None]) -> dict[str, Any]:
    """Show each new progress line until the benchmark's phase is final; the last resource read."""
    last = ""
    while True:
        resource = cluster.get(name)
        line = progress_text(resource)
        if line != last:
            show(line)
            last = line
        if (resource.get("status") or {}).get("phase") in FINISHED_PHASES:
            return resource
        time.sleep(WATCH_POLL_SECONDS)


def cmd_report(args: argparse.Namespace) -> int:
    """The HTML report of the live resource: the same page ``poolbench report`` makes of a saved one."""
    require("report", "jinja2", "kubectl poolbench report")
    output = args.output or f"{args.name}.html"
    cluster = connect(args)
    try:
        resource = cluster.with_results(cluster.get(args.name))
    finally:
        cluster.close()
    from .report import render_html

    meta = resource["metadata"]
    document = {
        "apiVersion": resource.get("apiVersion", f"{GROUP}/{VERSION}"),
        "kind": resource.get("kind", "PoolBenchmark"),
        "metadata": {"name": meta["name"], "namespace": meta.get("namespace", cluster.namespace)},
        "spec": resource.get("spec") or {},
        "status": resource.get("status") or {},
    }
    try:
        Path(output).write_text(render_html(document), encoding="utf-8")
    except OSError as err:
        raise PluginError(f"-o {output}: cannot be written: {err.strerror or err}") from None
    sys.stderr.write(f"report written to {output}\n")
    return EXIT_OK


# -- arguments and completion ---------------------------------------------------------------------


def add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", metavar="PATH", help="the kubeconfig (default: $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--context", metavar="NAME", help="the kubeconfig context (default: the current one)")
    parser.add_argument("-n", "--namespace", metavar="NS", help="the namespace (default: the context's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl poolbench",
        description="The PoolBenchmarks in a cluster: their status, progress and verdicts.",
        epilog="Exit codes: 0 done (watch: the benchmark passed), 1 the cluster said no or the benchmark"
        " failed, 2 bad arguments, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"kubectl-poolbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="a benchmark's phase, verdict, server, steps and comparison")
    status.add_argument("name")
    status.add_argument("-o", "--output", choices=("json", "yaml"), help="the resource's status as it is")
    status.set_defaults(func=cmd_status)
    listing = sub.add_parser("list", help="the benchmarks with their phase and a short verdict")
    listing.add_argument("-A", "--all-namespaces", action="store_true", help="in every namespace")
    listing.set_defaults(func=cmd_list)
    watch = sub.add_parser("watch", help="live progress until the benchmark ends (exit 0 when it passed)")
    watch.add_argument("name")
    watch.set_defaults(func=cmd_watch)
    report = sub.add_parser("report", help="the benchmark's self-contained HTML report")
    report.add_argument("name")
    report.add_argument("-o", "--output", metavar="FILE.html", help="where to write it (default: NAME.html)")
    report.set_defaults(func=cmd_report)
    for command in (status, listing, watch, report):
        add_cluster_flags(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except (PluginError, MissingExtra) as err:
        sys.stderr.write(f"kubectl poolbench: {err}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `kubectl poolbench list | head`
        return EXIT_OK
    except Exception as err:  # noqa: BLE001 - a bug, or a failure nobody foresaw: one line, not a traceback
        report_unexpected("kubectl poolbench", err)
        return EXIT_FAILED


def completions(words: list[str], names: Callable[[argparse.Namespace], list[str]]) -> list[str]:
    """What may come next after ``words`` (the last one the word being typed): a subcommand, an output
    format or a benchmark's name (``names`` reads them with the flags given so far)."""
    *before, typed = words or [""]
    if before and before[-1] in ("-o", "--output"):
        return [f for f in ("json", "yaml") if f.startswith(typed)] if "report" not in before else []
    positional: list[str] = []
    flags = argparse.Namespace(kubeconfig=None, context=None, namespace=None)
    taking = None
    for word in before:
        if taking:
            setattr(flags, taking, word)
            taking = None
        elif word in ("--kubeconfig", "--context", "-n", "--namespace", "-o", "--output"):
            taking = {"-n": "namespace", "-o": "output", "--output": "output"}.get(word, word.lstrip("-"))
        elif word.startswith("--") and "=" in word:
            key, _, value = word[2:].partition("=")
            setattr(flags, key.replace("-", "_"), value)
        elif not word.startswith("-"):
            positional.append(word)
    if typed.startswith("-"):
        return []
    if not positional:
        return [c for c in SUBCOMMANDS if c.startswith(typed)]
    if positional[0] in ("status", "watch", "report") and len(positional) == 1:
        return [n for n in names(flags) if n.startswith(typed)]
    return []


def names_in(flags: argparse.Namespace) -> list[str]:
    """The benchmarks' names in the namespace the flags (or the kubeconfig) choose; none if it cannot read."""
    try:
        cluster = connect(flags)
        try:
            return [r["metadata"]["name"] for r in cluster.list()]
        finally:
            cluster.close()
    except (PluginError, MissingExtra):
        return []


def complete(argv: list[str] | None = None) -> int:
    """``kubectl_complete-poolbench``: kubectl runs it with the words typed after ``kubectl poolbench``
    (the last one being completed); one candidate a line, then kubectl's directive."""
    try:
        for candidate in completions(sys.argv[1:] if argv is None else argv, names_in):
            print(candidate)
    except Exception:  # noqa: BLE001 - a completer prints no traceback into the user's command line
        pass
    words = sys.argv[1:] if argv is None else argv
    report_file = "report" in words and len(words) > 1 and words[-2] in ("-o", "--output")
    print(FILE_COMPLETION if report_file else NO_FILE_COMPLETION)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
