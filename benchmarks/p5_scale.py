"""P5 scale: thousands of client backends through the local runner, with the server log on; the sampler's
regularity, the log reader's lag under connection churn, and the memory it all takes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from poolbench.core.benchmark import full_status
from poolbench.core.sampling import advised_interval_ms, fell_behind

from ._p5churn import dist_ms, replay, run_churn
from .common import ROOT, Result, TreeMemory, median, percentile


def spec_doc(replicas: int, threads: int, interval_ms: int, hold: int, sleep: float) -> dict[str, Any]:
    return {
        "apiVersion": "poolbench.dev/v1alpha1",
        "kind": "PoolBenchmark",
        "metadata": {"name": "scale"},
        "spec": {
            "postgres": {"maxConnections": replicas * threads + 100},
            "workload": {
                "threads": threads,
                # A statement outlasts the stagger of a replica's thread starts on a loaded machine: no thread
                # finds another's connection idle, so every thread opens its own and all are open at once.
                "statement": f"SELECT pg_sleep({sleep:g})",
                "iterations": 2,
                "holdSeconds": hold,
                "onError": "count",
                "engine": {"poolClass": "QueuePool", "poolSize": threads, "maxOverflow": 0},
            },
            "steps": [replicas],
            "stepTimeoutSeconds": 300,
            "sampling": {"intervalMs": interval_ms},
        },
    }


def run_poolbench(
    replicas: int, threads: int, interval_ms: int, hold: int, sleep: float, sweep: float
) -> dict[str, Any]:
    """One ``poolbench run`` of a step of ``replicas`` × ``threads``; its step, timeline and memory."""
    tmp = Path(tempfile.mkdtemp(prefix="pb-bench-p5-"))
    try:
        spec = tmp / "scale.yaml"
        spec.write_text(yaml.safe_dump(spec_doc(replicas, threads, interval_ms, hold, sleep)))
        out = tmp / "r.json"
        t = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "poolbench.cli", "run", str(spec), "--output", str(out)],
            cwd=ROOT,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Sweeps of thousands of processes cost the machine CPU: few, and PSS (seconds of CPU) on the plateau only.
        memory = TreeMemory([proc.pid], interval=sweep, pss_on_plateau=True).start()
        try:
            _stdout, stderr = proc.communicate(timeout=900)
        finally:
            memory.stop()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        wall = time.monotonic() - t
        if proc.returncode != 0:
            raise RuntimeError(f"poolbench run failed ({proc.returncode}): {stderr[-800:]}")
        doc = json.loads(out.read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    timeline = doc["timeline"]
    times = [s["t"] for s in timeline]
    return {
        "replicas": replicas,
        "threads": threads,
        "interval": interval_ms / 1000,
        "hold": hold,
        "sleep": sleep,
        "wall": wall,
        "step": full_status(doc["status"])["variants"][0]["steps"][0],  # defaults are not written
        "samples": len(timeline),
        "failed": sum(1 for s in timeline if not s["ok"]),
        "gaps": [b - a for a, b in zip(times, times[1:], strict=False)],
        "loaded": [
            b["t"] - a["t"] for a, b in zip(timeline, timeline[1:], strict=False) if a["total"] > 0 or b["total"] > 0
        ],
        "memory": memory,
        "timeline": [(s["t"], s["total"], s["ok"]) for s in timeline],
    }


def gib(size: int, reads: int) -> str:
    """A PSS figure, or n/a when the run was too short for a read on a plateau."""
    return f"{size / 2**30:.2f} GiB" if reads else "n/a (no plateau to read it on)"


def memory_cells(memory: TreeMemory) -> str:
    return pss_cells(memory.peak_pss_by_command)


def pss_cells(by_command: dict[str, tuple[int, int]]) -> str:
    parts = [
        f"{command} {pss / 2**30:.2f} GiB ({count:,} processes)"
        for command, (pss, count) in sorted(by_command.items(), key=lambda kv: -kv[1][0])
    ]
    return "; ".join(parts)


def plateau_gaps(timeline: list[tuple[float, int, bool]]) -> list[float]:
    """The gaps between reads from the first read at the peak to the last one."""
    peak = max((total for _t, total, ok in timeline if ok), default=0)
    at_peak = [i for i, (_t, total, ok) in enumerate(timeline) if ok and total == peak]
    if not at_peak:
        return []
    times = [t for t, _total, _ok in timeline[at_peak[0] : at_peak[-1] + 1]]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def longest_gap(timeline: list[tuple[float, int, bool]]) -> str:
    """Where the longest gap between two reads fell: when, and what the reads on either side saw."""
    if len(timeline) < 2:
        return "n/a"
    i = max(range(len(timeline) - 1), key=lambda k: timeline[k + 1][0] - timeline[k][0])
    (t1, n1, _), (t2, n2, _) = timeline[i], timeline[i + 1]
    return f"{(t2 - t1) * 1000:.0f} ms at {t1:.1f} s, between reads of {n1:,} and {n2:,} backends"


def replay_label(r: dict[str, Any]) -> str:
    return f"{r['target']:,.0f} connects/s" if r["target"] else "flat out"


def on_schedule(a: dict[str, Any]) -> bool:
    """The run's reads kept their interval while connections were open (p99 gap ≤ 1.5 × interval)."""
    return not fell_behind(percentile(a["loaded"] or a["gaps"], 99) * 1000, a["interval"] * 1000) and a["failed"] == 0


def run(smoke: bool) -> Result:
    interval_ms = 100
    replicas, threads, hold = (5, 20, 4) if smoke else (40, 125, 120)
    stages, holders, churn_seconds = ((100, 300), 2, 4) if smoke else ((1000, 5000), 5, 20)
    clients, poll = 8, 0.05
    sleep, sweep = (0.5, 1.0) if smoke else (5, 5.0)
    b = run_churn(stages, holders, churn_seconds, interval_ms / 1000, clients, poll)
    capture = b.pop("capture")
    with tempfile.TemporaryDirectory(prefix="pb-bench-p5-replay-") as workdir:
        replays = [replay(capture, rate, poll, Path(workdir)) for rate in (2000.0, 4000.0, None)]
    a = run_poolbench(replicas, threads, interval_ms, hold, sleep=sleep, sweep=sweep)
    # The interval a read calls for: the p99 of the reads measured beside the bulk under churn, rounded up
    # as poolbench advises (each read then ends before the next is due); chosen before this run, never retried.
    advised = advised_interval_ms(percentile(b["reads_loaded"], 99) * 1000)
    slower = None if on_schedule(a) else run_poolbench(replicas, threads, advised, hold, sleep=sleep, sweep=sweep)
    return report(a, b, replays, slower, advised)


def read_cost_rows(b: dict[str, Any]) -> list[str]:
    costs: dict[int, dict[str, list[float]]] = b["read_costs"]
    rows = []
    for held, forms in costs.items():
        view, probe, function = (forms[k] for k in ("view", "probe", "function"))
        rows.append(
            f"| {held:,} | {dist_ms(view)} | {dist_ms(probe)} | {dist_ms(function)} "
            f"| **{median(probe) / median(view):.2f}** |"
        )
    return rows


def run_rows(a: dict[str, Any]) -> list[str]:
    """One poolbench run's table rows."""
    step, memory = a["step"], a["memory"]
    return [
        f"| wall time | {a['wall']:.1f} s |",
        f"| outcome | {step['outcome']} ({step['queries']:,} queries, errors {sum(step['errors'].values())}): "
        f"{step.get('reason') or ''} |",
        f"| peak: exact (server log) / sampled / predicted | {step['peakConnections']:,} ({step.get('peakSource')}) / "
        f"{step.get('sampledPeakConnections', 0):,} / {step['predictedPeak']:,} |",
        f"| idle at end: measured / predicted | {step['idleAtEnd']:,} / {step['predictedIdle']:,} |",
        f"| samples | {a['samples']} ({a['failed']} failed reads) |",
        f"| the step's own `sampleIntervalP99Ms` | {step.get('sampleIntervalP99Ms')} |",
        f"| inter-sample gap, whole run: median / p99 / max | {dist_ms(a['gaps'])} |",
        f"| inter-sample gap, while connections are open | {dist_ms(a['loaded'])} |",
        f"| inter-sample gap on the plateau (every read at {step.get('sampledPeakConnections', 0):,}) "
        f"| {dist_ms(plateau_gaps(a['timeline']))} |",
        f"| the longest gap | {longest_gap(a['timeline'])} |",
        f"| peak memory, RSS sum | {memory.peak_rss / 2**30:.2f} GiB ({memory.peak_procs:,} processes) |",
        f"| peak memory, PSS sum | {gib(memory.peak_pss, memory.pss_reads)} |",
        f"| PSS by process at that peak | {memory_cells(memory)} |",
        f"| memory sampling cost | {memory.sweeps} sweeps, "
        f"{memory.sweep_seconds / max(1, memory.sweeps) * 1000:.0f} ms each (in the benchmark process) |",
    ]


def regularity_goal(a: dict[str, Any], backends: int, why: str = "") -> tuple[str, str, bool | None]:
    interval = a["interval"]
    p99 = percentile(a["loaded"] or a["gaps"], 99)
    return (
        f"poolbench run: samples stay on their {interval * 1000:.0f} ms interval{why} at {backends:,} backends "
        "(p99 gap ≤ 1.5 × interval, no failed read)",
        f"p99 {p99 * 1000:.0f} ms, max {max(a['loaded'] or a['gaps']) * 1000:.0f} ms, {a['failed']} failed",
        on_schedule(a),
    )


def report(
    a: dict[str, Any], b: dict[str, Any], replays: list[dict[str, Any]], slower: dict[str, Any] | None, advised: int
) -> Result:
    step, interval, memory = a["step"], a["interval"], a["memory"]
    backends = a["replicas"] * a["threads"]
    costs: dict[int, dict[str, list[float]]] = b["read_costs"]
    largest = max(costs)
    cost_ratio = median(costs[largest]["probe"]) / median(costs[largest]["view"])
    read_p99 = percentile(b["reads_loaded"], 99)
    churn_gaps = b["gaps_loaded"]
    churn_p99 = percentile(churn_gaps, 99)
    paced = [r for r in replays if r["target"]]
    flat = next(r for r in replays if not r["target"])
    lag_p99 = percentile(b["lag"], 99)
    exact_held = b["exact_open_quiet"] == b["held"] and b["sampled_quiet"] == [b["held"]]
    # The bulk, then per churning client (pgbench's and the marker's) its session and the one before it, whose
    # disconnection line may come after the next session is authorized (a backend logs its end as it exits).
    churn_bound = b["held"] + 2 * (b["clients"] + 1)
    goals: list[tuple[str, str, bool | None]] = [
        (
            f"poolbench run, {a['replicas']} replicas × {a['threads']} connections = {backends:,} client backends: "
            "step passed, exact peak from the server's log = predicted, sampled ≤ exact",
            f"{step['outcome']}, peak {step['peakConnections']:,} ({step.get('peakSource')}) of "
            f"{step['predictedPeak']:,} predicted, sampled {step.get('sampledPeakConnections', 0):,}",
            step["outcome"] == "Passed"
            and step.get("peakSource") == "serverLog"
            and step["peakConnections"] == step["predictedPeak"]
            and step.get("sampledPeakConnections", 0) <= step["peakConnections"],
        ),
        regularity_goal(a, backends, " (default)"),
        *(
            [
                regularity_goal(
                    slower,
                    backends,
                    f" (the interval a read calls for: p99 read {read_p99 * 1000:.0f} ms under churn, rounded up)",
                )
            ]
            if slower is not None
            else []
        ),
        (
            f"one read at {largest:,} idle backends: the probe's query ÷ the same count through the pg_stat_activity "
            "view (median, alternated, same server; information)",
            f"{cost_ratio:.2f} ({median(costs[largest]['probe']) * 1000:.1f} ms ÷ "
            f"{median(costs[largest]['view']) * 1000:.1f} ms)",
            None,
        ),
        (
            f"{b['held']:,} idle backends held: the exact timeline and the sampler both count exactly them",
            f"exact {b['exact_open_quiet']:,}, sampled {', '.join(f'{n:,}' for n in b['sampled_quiet'])}",
            exact_held,
        ),
        (
            "the same with connection churn on top: samples on their interval (p99 gap ≤ 1.5 × interval, no failed "
            "read)",
            f"p99 {churn_p99 * 1000:.0f} ms, max {max(churn_gaps) * 1000:.0f} ms, {b['failed_reads']} failed; "
            f"a read takes {dist_ms(b['reads_loaded'])} (median / p99 / max)",
            churn_p99 <= 1.5 * interval and b["failed_reads"] == 0,
        ),
        (
            f"the exact peak under churn lies between the bulk and the bulk + two sessions per churning client "
            f"({b['held']:,} … {churn_bound:,}: one open, one still exiting); the sampled one not above it; none left "
            "open at the end",
            f"exact {b['exact_peak']:,}, sampled {b['sampled_peak']:,}, open at the end {b['open_at_end']}",
            b["held"] <= b["exact_peak"] <= churn_bound
            and b["sampled_peak"] <= b["exact_peak"]
            and b["open_at_end"] == 0,
        ),
        (
            "connection churn reached by the generator (pgbench -C, Unix socket; goal ≥ 2,000 connects/s)",
            f"{b['connects_per_second']:,.0f} connects/s beside {b['held']:,} idle backends; the server spends "
            f"{b['server_cpu_per_connect'] * 1000:.1f} ms CPU per connect",
            b["connects_per_second"] >= 2000,
        ),
        (
            "the log reader keeps up with the live churn: every marker connect parsed, p99 lag from the connect's "
            f"return ≤ 2 × the sampling interval ({2 * interval * 1000:.0f} ms)",
            f"{b['markers_seen']} of {b['markers']} parsed, lag {dist_ms(b['lag'])} (median / p99 / max)",
            b["markers_seen"] == b["markers"] and lag_p99 <= 2 * interval,
        ),
        *[
            (
                f"the log reader keeps up with the same lines replayed at {r['target']:,.0f} connects/s: "
                f"all parsed, p99 lag ≤ 2 × the sampling interval ({2 * interval * 1000:.0f} ms)",
                f"{r['achieved_connects_per_second']:,.0f} connects/s written, lag {dist_ms(r['lag'])}",
                r["parsed_all"] and percentile(r["lag"], 99) <= 2 * interval,
            )
            for r in paced
        ],
        (
            "the log reader's throughput (lines per CPU second of its thread, replayed flat out)",
            f"{flat['lines_per_cpu_second']:,.0f} lines/s "
            f"= {flat['lines_per_cpu_second'] * flat['connects'] / flat['lines']:,.0f} connects/s",
            None,
        ),
        (
            "peak memory reported (poolbench run: runner + replicas + postgres; churn: postgres + holders)",
            f"PSS {gib(memory.peak_pss, memory.pss_reads)} at {backends:,} backends; "
            f"{b['peak_pss'] / 2**30:.2f} GiB with {b['held']:,} held",
            None,
        ),
    ]
    md = [
        "Two parts, each on its own embedded PostgreSQL 18 with the connection log on (`SERVER_LOG_SETTINGS`).",
        "",
        f"**`poolbench run` at {backends:,} backends.** {a['replicas']} replicas × {a['threads']} threads (QueuePool "
        f"poolSize {a['threads']} maxOverflow 0, `SELECT pg_sleep({a['sleep']:g})` × 2 iterations, hold "
        f"{a['hold']} s so that every replica's connections overlap), max_connections {backends + 100}, sampling every "
        f"{interval * 1000:.0f} ms; the runner follows the server's log and reports the exact peak beside the "
        "sampled one. Fewer replica processes with more threads each: a replica's own memory is paid per process, "
        "a thread costs little (poolbench's own estimate, 40 MiB a replica and 2 MiB a backend, keeps the run under "
        "half the machine's memory without `--allow-large`). Memory: the process tree of the CLI (runner, replica "
        "launcher, replicas, postmaster and every backend), RSS every 5 s (1 s in a smoke run) and PSS once the "
        "process count stops changing; RSS counts shared pages again in every process that maps them (an upper "
        "bound), PSS shares them out (the honest total).",
        "",
        "| measure | value |",
        "|---|---|",
        *run_rows(a),
        "",
        *(
            [
                f"**The same at the interval a read calls for: {advised} ms.** Chosen before this run from the read "
                f"time measured beside {b['held']:,} idle backends under churn (below): its p99, "
                f"{read_p99 * 1000:.0f} ms, rounded up to 50 ms as poolbench's own advice rounds (`sampling."
                "advised_interval_ms`), so that a read ends before the next one is due; run once, not tuned.",
                "",
                "| measure | value |",
                "|---|---|",
                *run_rows(slower),
                "",
            ]
            if slower is not None
            else []
        ),
        f"**What one read costs.** The probe's read (its prepared query: `pg_stat_get_activity(NULL)` itself, one "
        "clock reading per read) against the same count through the `pg_stat_activity` view with one clock reading "
        "per row, and against the floor (`count(*)` of the function, nothing else), each prepared once, "
        f"{len(costs[largest]['view'])} reads of each alternated on one autocommit session while the holders below "
        "hold that many idle backends (nothing else running on the server). The function looks up each backend's "
        "process with a scan of the process array (`BackendPidGetProc`, once per row), so its cost grows faster than "
        "the backends; the query around it can only save what lies between it and the floor.",
        "",
        "| idle backends | the view: median / p99 / max | the probe's query | the function alone | probe ÷ view "
        "(medians) |",
        "|---|---|---|---|---|",
        *read_cost_rows(b),
        "",
        f"**Churn beside {b['held']:,} idle backends.** {b['holders']} light holder processes "
        f"(`benchmarks._hold`: psycopg2 connections and nothing else) open {b['held']:,} idle backends "
        f"({', then '.join(f'{n:,}' for n in b['read_costs'])}, the read's cost measured at each; "
        f"{b['hold_seconds']:.1f} s of opening); then poolbench's sampler (`Probe` + `SamplerThread`, every "
        f"{interval * 1000:.0f} ms), a log reader with poolbench's own parts (`LogFile` follows the file, "
        f"`serverlog.parse_line`, `timeline.ServerTimeline`; the sampler's session excluded as the monitor does) "
        f"draining the log every {b['reader_poll'] * 1000:.0f} ms, `pgbench -C -c {b['clients']} -j 2` (`SELECT 1`, "
        f"a connect and a disconnect per transaction, Unix socket) for {b['churn_seconds']:.0f} s, and a marker "
        "connect every 100 ms whose return time is noted: lag = parsed − returned. The same captured log is then "
        "replayed into a fresh file at fixed connect rates (and flat out) with the reader following it: lag = "
        "parsed − written.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| churn achieved | **{b['connects_per_second']:,.0f} connects/s** ({b['connects']:,} connects, "
        f"pgbench {b['pgbench_tps']:,.0f} tps including reconnection) |",
        f"| the server's CPU per connect (postmaster + backends) | {b['server_cpu_per_connect'] * 1000:.2f} ms; "
        f"the server used {b['server_cpu_share'] * 100:.0f} % of the machine's {os.cpu_count()} cores |",
        f"| log lines read during the churn | {b['lines']:,} ({b['lines'] / b['churn_seconds']:,.0f} lines/s; largest "
        f"drain {b['max_batch']:,} lines) |",
        f"| log reader CPU | {b['reader_cpu']:.2f} s = {b['reader_cpu_share'] * 100:.1f} % of one core "
        f"({b['lines_per_cpu_second']:,.0f} lines per CPU second) |",
        f"| marker lag, connect returned → parsed: median / p99 / max | {dist_ms(b['lag'])} |",
        f"| line lag, the server's time of the line → parsed | {dist_ms(b['line_lag'])} |",
        f"| before the churn: exact open / sampled | {b['exact_open_quiet']:,} / "
        f"{', '.join(f'{n:,}' for n in b['sampled_quiet'])} |",
        f"| exact: peak / open after the churn / open at the end | {b['exact_peak']:,} / "
        f"{b['open_after_churn']:,} / {b['open_at_end']:,} |",
        f"| sampled: peak / lowest during the churn | {b['sampled_peak']:,} / {b['sampled_during_churn_min']:,} |",
        f"| one sampler read (pg_stat_activity): before / during the churn, median / p99 / max "
        f"| {dist_ms(b['reads_quiet'])}; {dist_ms(b['reads_loaded'])} |",
        f"| inter-sample gap during the churn: median / p99 / max | {dist_ms(churn_gaps)} |",
        f"| peak memory, RSS / PSS sum (server and holders) | {b['peak_rss'] / 2**30:.2f} / "
        f"{b['peak_pss'] / 2**30:.2f} GiB ({b['peak_procs']:,} processes) |",
        f"| PSS by process, the bulk held before the churn | {pss_cells(b['pss_by_command'])} |",
        "",
        "| replay | lines | connects/s written | caught up after | lag, written → parsed: median / p99 / max "
        "| lines per CPU second |",
        "|---|---|---|---|---|---|",
        *[
            f"| {replay_label(r)} | {r['lines']:,} "
            f"| {r['achieved_connects_per_second']:,.0f} | {r['caught_up_seconds']:.2f} s | {dist_ms(r['lag'])} "
            f"| {r['lines_per_cpu_second']:,.0f} |"
            for r in replays
        ],
    ]
    data = {
        "run": {k: v for k, v in a.items() if k not in ("memory", "gaps", "loaded", "timeline")},
        "run_at_advised_interval": None
        if slower is None
        else {k: v for k, v in slower.items() if k not in ("memory", "gaps", "loaded", "timeline")},
        "advised_interval_ms": advised,
        "run_gaps_ms": {"median": median(a["gaps"]) * 1000, "p99": percentile(a["gaps"], 99) * 1000},
        "run_pss": memory.peak_pss,
        "churn": {
            k: v for k, v in b.items() if k not in ("lag", "line_lag", "gaps_loaded", "reads_quiet", "reads_loaded")
        },
        "replays": [{k: v for k, v in r.items() if k != "lag"} for r in replays],
    }
    return Result("P5", "Scale", goals, "\n".join(md), data)
