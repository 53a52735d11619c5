"""P5 scale: 50 replicas × 20 connections through the local runner; sampling regularity and memory."""

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

from .common import ROOT, Result, TreeMemory, median, percentile


def spec_doc(replicas: int, threads: int, interval_ms: int) -> dict[str, Any]:
    return {
        "apiVersion": "poolbench.dev/v1alpha1",
        "kind": "PoolBenchmark",
        "metadata": {"name": "scale"},
        "spec": {
            "postgres": {"maxConnections": replicas * threads + 100},
            "workload": {
                "threads": threads,
                "statement": "SELECT pg_sleep(0.05)",
                "iterations": 10,
                "holdSeconds": 6,
                "onError": "count",
                "engine": {"poolClass": "QueuePool", "poolSize": threads, "maxOverflow": 0},
            },
            "steps": [replicas],
            "stepTimeoutSeconds": 240,
            "sampling": {"intervalMs": interval_ms},
        },
    }


def run(smoke: bool) -> Result:
    replicas, threads, interval_ms = (5, 20, 100) if smoke else (50, 20, 100)
    tmp = Path(tempfile.mkdtemp(prefix="pb-bench-p5-"))
    try:
        spec = tmp / "scale.yaml"
        spec.write_text(yaml.safe_dump(spec_doc(replicas, threads, interval_ms)))
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
        memory = TreeMemory([proc.pid], interval=0.5, pss_every=6).start()
        try:
            stdout, stderr = proc.communicate(timeout=600)
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
    status, timeline = doc["status"], doc["timeline"]
    step = status["variants"][0]["steps"][0]
    interval = interval_ms / 1000
    times = [s["t"] for s in timeline]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    loaded = [b["t"] - a["t"] for a, b in zip(timeline, timeline[1:], strict=False) if a["total"] > 0 or b["total"] > 0]
    failed = sum(1 for s in timeline if not s["ok"])

    def dist(values: list[float]) -> str:
        if not values:
            return "n/a"
        return (
            f"{median(values) * 1000:.0f} / {percentile(values, 99) * 1000:.0f} / {max(values) * 1000:.0f} ms "
            f"({len(values)} gaps)"
        )

    p99 = percentile(loaded or gaps, 99)
    goals = [
        (
            f"{replicas} replicas × {threads} connections complete (step passed, peak = predicted)",
            f"{step['outcome']}, peak {step['peakConnections']} of {step['predictedPeak']} predicted",
            step["outcome"] == "Passed" and step["peakConnections"] == step["predictedPeak"],
        ),
        (
            f"samples stay on their {interval_ms} ms interval under load (p99 gap ≤ 1.5 × interval, no failed read)",
            f"p99 {p99 * 1000:.0f} ms, max {max(loaded or gaps) * 1000:.0f} ms, {failed} failed",
            p99 <= 1.5 * interval and failed == 0,
        ),
        (
            "peak memory of the whole run reported (runner + launcher + replicas + postgres)",
            f"RSS sum {memory.peak_rss / 2**30:.2f} GiB, PSS sum {memory.peak_pss / 2**30:.2f} GiB",
            None,
        ),
    ]
    md = [
        f"`poolbench run` with {replicas} replicas × {threads} threads (QueuePool poolSize {threads} maxOverflow 0, "
        f"`SELECT pg_sleep(0.05)` × 10 iterations, hold 6 s so that every replica overlaps), "
        f"max_connections {replicas * threads + 100}, sampling "
        f"every {interval_ms} ms. Memory: the process tree of the CLI (runner, replica launcher, replicas, postmaster "
        "and every backend) summed every 0.5 s (PSS every 3 s); RSS counts shared pages again in every process that "
        "maps them (an upper bound), PSS shares them out (the honest total).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| wall time | {wall:.1f} s |",
        f"| outcome | {step['outcome']} ({step['queries']:,} queries, errors {sum(step['errors'].values())}) |",
        f"| measured peak / predicted | {step['peakConnections']} / {step['predictedPeak']} "
        f"(idle at end {step['idleAtEnd']} / {step['predictedIdle']}) |",
        f"| samples | {len(timeline)} ({failed} failed reads) |",
        f"| inter-sample gap, whole run: median / p99 / max | {dist(gaps)} |",
        f"| inter-sample gap, while connections are open | {dist(loaded)} |",
        f"| peak memory, RSS sum | {memory.peak_rss / 2**30:.2f} GiB ({memory.peak_procs} processes) |",
        f"| peak memory, PSS sum | {memory.peak_pss / 2**30:.2f} GiB |",
        f"| memory sampling cost | {memory.sweeps} sweeps, "
        f"{memory.sweep_seconds / max(1, memory.sweeps) * 1000:.0f} ms each "
        "(in the benchmark process, not the runner) |",
    ]
    data = {
        "wall": wall,
        "step": step,
        "gaps_ms": {"median": median(gaps) * 1000, "p99": percentile(gaps, 99) * 1000, "max": max(gaps) * 1000},
        "loaded_gaps_ms": {"median": median(loaded) * 1000 if loaded else None, "p99": p99 * 1000},
        "peak_rss": memory.peak_rss,
        "peak_pss": memory.peak_pss,
        "peak_procs": memory.peak_procs,
    }
    return Result("P5", "Scale", goals, "\n".join(md), data)
