"""P1 probe fidelity: sampled peaks of connection bursts against the server's own log."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg2

from poolbench.core.sampling import Sample
from poolbench.db.probe import Probe, SamplerThread

from .common import ROOT, Result, client_env, fmt, pg_version, postgres

if TYPE_CHECKING:
    from poolbench.local.embedded import LocalPostgres

LOG_RE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \S+ \[(\d+)\] LOG:  (connection authorized|disconnection): (.*)$"
)
APP_RE = re.compile(r"application_name=(\S+)")
PREFIX = "pbb-"


def log_settings() -> dict[str, str]:
    major = int(pg_version().split(".")[0])
    return {
        # PostgreSQL 18 takes a list of stages; "authorization" is the line that carries application_name.
        "log_connections": "authorization" if major >= 18 else "on",
        "log_disconnections": "on",
        "log_line_prefix": "%m [%p] ",
    }


def exact_timelines(log_text: str) -> dict[str, list[tuple[float, int]]]:
    """Per application_name: the exact number of its connections over time, rebuilt from the log."""
    app_of: dict[str, str] = {}
    events: dict[str, list[tuple[float, int, int]]] = defaultdict(list)
    for order, line in enumerate(log_text.splitlines()):
        m = LOG_RE.match(line)
        if not m:
            continue
        ts, pid, what, rest = m.groups()
        t = datetime.strptime(ts, "%Y-%m-%d %H:%M:%S.%f").timestamp()
        if what == "connection authorized":
            app_match = APP_RE.search(rest)
            if app_match and app_match.group(1).startswith(PREFIX):
                app_of[pid] = app_match.group(1)
                events[app_match.group(1)].append((t, order, +1))
        elif pid in app_of:
            events[app_of.pop(pid)].append((t, order, -1))
    timelines: dict[str, list[tuple[float, int]]] = {}
    for app, evs in events.items():
        level = 0
        timeline: list[tuple[float, int]] = []
        for t, _order, delta in sorted(evs):  # same millisecond: the log's own order
            level += delta
            timeline.append((t, level))
        timelines[app] = timeline
    return timelines


def peak_and_plateau(timeline: list[tuple[float, int]]) -> tuple[int, float]:
    peak = max((level for _t, level in timeline), default=0)
    plateau = 0.0
    for (t, level), (t_next, _) in zip(timeline, timeline[1:], strict=False):
        if level == peak:
            plateau += t_next - t
    return peak, plateau


class Recorder:
    """One probe on its own sampler thread, keeping every sample."""

    def __init__(self, pg: LocalPostgres, interval: float, t0: float) -> None:
        self.interval = interval
        self.samples: list[Sample] = []
        self.probe = Probe(lambda **kw: psycopg2.connect(**pg.connect_kwargs(), connect_timeout=5, **kw), PREFIX)
        self.probe.open()
        self.thread = SamplerThread(self.probe, interval, self.samples.append, t0)

    def peak(self, app: str) -> int:
        return max((s.by_app.get(app, 0) for s in self.samples if s.ok), default=0)

    def stop(self) -> None:
        self.thread.stop()
        self.probe.close()


def send_bursts(
    helper: subprocess.Popen[str], plan: list[tuple[int, int]], rng: random.Random
) -> list[tuple[str, int, int]]:
    """Have the helper open and hold each burst of ``plan`` (width ms, height connections) in turn, a
    random gap after each: the bursts' names, widths and heights."""
    assert helper.stdin is not None
    assert helper.stdout is not None
    bursts: list[tuple[str, int, int]] = []
    for k, (width, height) in enumerate(plan):
        name = f"{PREFIX}{k:03d}"
        helper.stdin.write(f"{height} {width} {name}\n")
        helper.stdin.flush()
        reply = helper.stdout.readline().strip()
        if not reply.startswith("done"):
            raise RuntimeError(f"burst helper: {reply or 'no answer'}")
        bursts.append((name, width, height))
        time.sleep(rng.uniform(0.15, 0.45))  # a random phase against every sampling grid
    return bursts


def run(smoke: bool) -> Result:
    widths = [50, 200] if smoke else [20, 50, 100, 200, 500]
    heights = [10] if smoke else [10, 30]
    per_width = 2 if smoke else 6
    intervals = [("probe 100 ms (default)", 0.1), ("probe 20 ms", 0.02), ("1 s poll", 1.0)]
    rng = random.Random(5)
    bursts: list[tuple[str, int, int]] = []
    with postgres(max_connections=100, settings=log_settings()) as pg:
        helper = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._burst"],
            cwd=ROOT,
            env=client_env(pg),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        t0 = time.monotonic()
        recorders = [Recorder(pg, interval, t0) for _label, interval in intervals]
        try:
            for r in recorders:
                r.thread.start()
            time.sleep(0.3)
            plan = [(w, heights[i % len(heights)]) for w in widths for i in range(per_width)]
            rng.shuffle(plan)
            bursts = send_bursts(helper, plan, rng)
            time.sleep(1.2)  # the 1 s poll gets a read after the last burst
        finally:
            for r in recorders:
                r.stop()
            if helper.stdin:
                helper.stdin.close()
            try:
                helper.wait(10)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait(5)
        time.sleep(0.3)  # the last disconnection lines
        log_text = pg.log_path.read_text(errors="replace")
    exact = exact_timelines(log_text)
    rows: list[str] = []
    data: dict[str, Any] = {"bursts": []}
    goals: list[tuple[str, str, bool | None]] = []
    by_cell: dict[tuple[str, int], list[float]] = defaultdict(list)
    plateau_by_width: dict[int, list[float]] = defaultdict(list)
    for name, width, height in bursts:
        peak, plateau = peak_and_plateau(exact.get(name, []))
        plateau_by_width[width].append(plateau)
        entry: dict[str, Any] = {
            "name": name,
            "width_ms": width,
            "height": height,
            "exact_peak": peak,
            "exact_plateau_ms": round(plateau * 1000),
        }
        for (label, _interval), r in zip(intervals, recorders, strict=True):
            sampled = r.peak(name)
            ratio = sampled / peak if peak else float("nan")
            entry[label] = sampled
            by_cell[(label, width)].append(ratio)
        data["bursts"].append(entry)
    header = "| burst width | exact plateau (mean) | " + " | ".join(f"{label}: mean / min" for label, _ in intervals)
    rows.append(header + " |")
    rows.append("|" + "---|" * (2 + len(intervals)))
    for width in widths:
        plateau = sum(plateau_by_width[width]) / len(plateau_by_width[width]) * 1000
        cells = []
        for label, _ in intervals:
            ratios = by_cell[(label, width)]
            cells.append(f"{fmt(sum(ratios) / len(ratios))} / {fmt(min(ratios))}")
        rows.append(f"| {width} ms | {plateau:.0f} ms | " + " | ".join(cells) + " |")
    data["samples"] = {label: len(r.samples) for (label, _), r in zip(intervals, recorders, strict=True)}
    # Goals: 1.00 (every burst seen at its full height) when the burst is at least twice the interval;
    # ≥ 0.95 on average for 50 ms bursts at the fastest interval (20 ms).
    for label, interval in intervals[:2]:
        wide = [w for w in widths if w >= 2 * interval * 1000]
        worst = min((min(by_cell[(label, w)]) for w in wide), default=float("nan"))
        goals.append(
            (
                f"{label}: every burst ≥ 2 × interval ({', '.join(f'{w} ms' for w in wide)}) at its exact "
                "peak (min ratio 1.00)",
                fmt(worst),
                worst >= 1.0,
            )
        )
    fifty = by_cell.get(("probe 20 ms", 50), [])
    if fifty:
        mean50 = sum(fifty) / len(fifty)
        goals.append(
            ("probe 20 ms: 50 ms bursts, mean ratio ≥ 0.95", f"{fmt(mean50)} (min {fmt(min(fifty))})", mean50 >= 0.95)
        )
    md = [
        f"{len(bursts)} bursts (heights {', '.join(map(str, heights))}; {per_width} per width, in random order with "
        "random gaps) from a helper process that opens all connections at once, holds them for the width, then closes "
        "them. Ground truth: the server's own log (`log_connections`, `log_disconnections`, "
        "`log_line_prefix='%m [%p] '`), each `connection authorized` … `disconnection` pair an exact interval, "
        "rebuilt into the exact number of connections per burst over time. Three samplers ran side by side, each "
        "poolbench's `Probe` + `SamplerThread` with its own monitor connection. Cells: sampled peak ÷ exact peak over "
        "the bursts of that width.",
        "",
        *rows,
    ]
    return Result("P1", "Probe fidelity", goals, "\n".join(md), data)
