"""P1 probe fidelity: sampled peaks of connection bursts, and the exact peaks poolbench reads from the server's
log, against what the burst helper opened."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg2

from poolbench.core.sampling import Sample
from poolbench.core.serverlog import parse_line
from poolbench.core.timeline import ServerTimeline
from poolbench.db.probe import Probe, SamplerThread

from .common import ROOT, Result, client_env, fmt, postgres

if TYPE_CHECKING:
    from poolbench.local.embedded import LocalPostgres

PREFIX = "pbb-"
EXACT = "exact (server log)"


def exact_peaks(log_text: str, monitors: list[int], bursts: list[Burst]) -> dict[str, tuple[int, float]]:
    """Per burst: poolbench's exact peak of open connections from the server's log (its own parser and
    timeline, the samplers' sessions excluded as the monitor excludes its own) and how long it lasted."""
    timeline = ServerTimeline()
    for pid in monitors:
        timeline.exclude(pid)
    timeline.add_all([event for event in map(parse_line, log_text.splitlines()) if event is not None])
    found: dict[str, tuple[int, float]] = {}
    for burst in bursts:
        account = timeline.window(burst.sent - 0.05, burst.done + 0.1)
        points = account.points
        plateau = sum(t2 - t1 for (t1, n), (t2, _) in zip(points, points[1:], strict=False) if n == account.peak)
        found[burst.name] = (account.peak, plateau)
    return found


@dataclass(frozen=True)
class Burst:
    name: str
    width: int  # ms
    height: int  # connections the helper opened at once
    sent: float  # epoch seconds: the command went to the helper
    done: float  # epoch seconds: the helper had closed them all


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


def send_bursts(helper: subprocess.Popen[str], plan: list[tuple[int, int]], rng: random.Random) -> list[Burst]:
    """Have the helper open and hold each burst of ``plan`` (width ms, height connections) in turn, a
    random gap after each: the bursts, each with when it was asked for and when it was over."""
    assert helper.stdin is not None
    assert helper.stdout is not None
    bursts: list[Burst] = []
    for k, (width, height) in enumerate(plan):
        name = f"{PREFIX}{k:03d}"
        sent = time.time()
        helper.stdin.write(f"{height} {width} {name}\n")
        helper.stdin.flush()
        reply = helper.stdout.readline().strip()
        if not reply.startswith("done"):
            raise RuntimeError(f"burst helper: {reply or 'no answer'}")
        bursts.append(Burst(name, width, height, sent, time.time()))
        time.sleep(rng.uniform(0.15, 0.45))  # a random phase against every sampling grid
    return bursts


def run(smoke: bool) -> Result:
    widths = [5, 200] if smoke else [5, 20, 50, 100, 200, 500]
    heights = [10] if smoke else [10, 30]
    per_width = 2 if smoke else 6
    intervals = [("probe 100 ms (default)", 0.1), ("probe 20 ms", 0.02), ("1 s poll", 1.0)]
    rng = random.Random(5)
    bursts: list[Burst] = []
    with postgres(max_connections=100) as pg:  # it logs every connection as poolbench's servers do
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
        monitors = [pid for r in recorders if (pid := r.probe.backend_pid()) is not None]
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
    exact = exact_peaks(log_text, monitors, bursts)
    rows: list[str] = []
    data: dict[str, Any] = {"bursts": []}
    goals: list[tuple[str, str, bool | None]] = []
    by_cell: dict[tuple[str, int], list[float]] = defaultdict(list)
    plateau_by_width: dict[int, list[float]] = defaultdict(list)
    for burst in bursts:
        peak, plateau = exact.get(burst.name, (0, 0.0))
        plateau_by_width[burst.width].append(plateau)
        by_cell[(EXACT, burst.width)].append(peak / burst.height)
        entry: dict[str, Any] = {
            "name": burst.name,
            "width_ms": burst.width,
            "height": burst.height,
            "exact_peak": peak,
            "exact_plateau_ms": round(plateau * 1000),
        }
        for (label, _interval), r in zip(intervals, recorders, strict=True):
            sampled = r.peak(burst.name)
            entry[label] = sampled
            by_cell[(label, burst.width)].append(sampled / burst.height)
        data["bursts"].append(entry)
    columns = [EXACT, *(label for label, _ in intervals)]
    header = "| burst width | exact plateau (mean) | " + " | ".join(f"{label}: mean / min" for label in columns)
    rows.append(header + " |")
    rows.append("|" + "---|" * (2 + len(columns)))
    for width in widths:
        plateau = sum(plateau_by_width[width]) / len(plateau_by_width[width]) * 1000
        cells = []
        for label in columns:
            ratios = by_cell[(label, width)]
            cells.append(f"{fmt(sum(ratios) / len(ratios))} / {fmt(min(ratios))}")
        rows.append(f"| {width} ms | {plateau:.0f} ms | " + " | ".join(cells) + " |")
    data["samples"] = {label: len(r.samples) for (label, _), r in zip(intervals, recorders, strict=True)}
    exact_ratios = [r for w in widths for r in by_cell[(EXACT, w)]]
    goals.append(
        (
            f"{EXACT}: every burst at its height, at every width ({', '.join(f'{w} ms' for w in widths)}; "
            "min and max ratio 1.00)",
            f"min {fmt(min(exact_ratios))}, max {fmt(max(exact_ratios))} over {len(exact_ratios)} bursts",
            min(exact_ratios) == 1.0 == max(exact_ratios),
        )
    )
    # Goals: 1.00 (every burst seen at its full height) when the burst is at least twice the interval;
    # ≥ 0.95 on average for 50 ms bursts at the fastest interval (20 ms).
    for label, interval in intervals[:2]:
        wide = [w for w in widths if w >= 2 * interval * 1000]
        worst = min((min(by_cell[(label, w)]) for w in wide), default=float("nan"))
        goals.append(
            (
                f"{label}: every burst ≥ 2 × interval ({', '.join(f'{w} ms' for w in wide)}) at its "
                "height (min ratio 1.00)",
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
        "random gaps) from a helper process that opens all connections at once, waits until all are open, holds them "
        "for the width, then closes them. Ground truth: the burst's height, what the helper opened. The exact column "
        "is poolbench's own reading of the server's log (the server runs with `SERVER_LOG_SETTINGS`, as every server "
        "poolbench creates; `serverlog.parse_line` into `timeline.ServerTimeline`, the samplers' sessions excluded as "
        "the monitor excludes its own; each burst's peak is the timeline's `window` from the moment the burst was "
        "asked for to the moment it was over); its plateau is how long that peak lasted. Three samplers ran side by "
        "side, each poolbench's `Probe` + `SamplerThread` with its own monitor connection. Cells: peak ÷ height over "
        "the bursts of that width.",
        "",
        *rows,
    ]
    return Result("P1", "Probe fidelity", goals, "\n".join(md), data)
