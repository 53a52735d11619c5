"""P2 probe cost: pgbench select-only throughput with poolbench's probe sampling at 20 Hz ÷ without."""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

import psutil
import psycopg2

from poolbench.core.sampling import Sample, StepAccumulator
from poolbench.db.probe import Probe, SamplerThread

from .common import Result, fmt, median, percentile, pgbench, pgbench_tps, postgres

if TYPE_CHECKING:
    from poolbench.local.embedded import LocalPostgres

PREFIX = "pb-p2-"


class Sampling:
    """The probe as the local runner runs it: its own thread, samples folded into a step's peaks."""

    def __init__(self, pg: LocalPostgres, interval: float) -> None:
        self.acc = StepAccumulator(replicas=1)
        self.lock = threading.Lock()
        self.probe = Probe(lambda **kw: psycopg2.connect(**pg.connect_kwargs(), connect_timeout=5, **kw), PREFIX)
        self.probe.open()
        self.thread = SamplerThread(self.probe, interval, self._sink, time.monotonic())

    def _sink(self, sample: Sample) -> None:
        with self.lock:
            self.acc.add(sample)

    def _cpu(self) -> float:
        """CPU seconds of the monitor's backend and of the sampler thread so far."""
        total = sum(self.backend.cpu_times()[:2])
        for t in psutil.Process().threads():
            if t.id == self.thread.native_id:
                total += t.user_time + t.system_time
        return total

    def __enter__(self) -> Sampling:
        pid = self.probe.backend_pid()
        assert pid is not None, "the probe is opened in __init__"
        self.backend = psutil.Process(pid)
        self.t = time.monotonic()
        self.thread.start()
        self.cpu0 = self._cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = self._cpu() - self.cpu0
        self.thread.stop()
        self.probe.close()
        self.elapsed = time.monotonic() - self.t


def run_config(max_connections: int, idle: int, seconds: int, pairs: int) -> dict[str, Any]:
    with postgres(max_connections=max_connections) as pg:
        pgbench(pg, ["-i", "-s", "1", "-q"])
        held = [psycopg2.connect(**pg.connect_kwargs(), application_name=f"{PREFIX}r{i // 10}") for i in range(idle)]
        try:
            args = ["-S", "-c", "8", "-j", "2", "-T", str(seconds), "-n"]
            pgbench_tps(pg, ["-S", "-c", "8", "-j", "2", "-T", "1", "-n"])  # warm the cache
            without, with_probe, rates, cpu_share = [], [], [], []
            for i in range(pairs):
                order = (False, True) if i % 2 == 0 else (True, False)  # ABBA: no order bias
                for probing in order:
                    if probing:
                        with Sampling(pg, 0.05) as s:
                            with_probe.append(pgbench_tps(pg, args))
                        rates.append(s.acc.samples / s.elapsed)
                        cpu_share.append((s.cpu, s.elapsed))
                        if s.acc.peak < idle:
                            raise RuntimeError(f"probe saw {s.acc.peak} of {idle} idle connections")
                    else:
                        without.append(pgbench_tps(pg, args))
        finally:
            for c in held:
                c.close()
    ratios = [w / wo for w, wo in zip(with_probe, without, strict=True)]
    # CPU seconds are counted in clock ticks (10 ms): add them up over all runs before dividing.
    share = sum(c for c, _ in cpu_share) / (sum(e for _, e in cpu_share) * (os.cpu_count() or 1))
    return {
        "max_connections": max_connections,
        "idle": idle,
        "without": without,
        "with": with_probe,
        "ratios": ratios,
        "sample_rate_hz": rates,
        "probe_cpu_share": share,
    }


def run(smoke: bool) -> Result:
    seconds, pairs = (2, 1) if smoke else (3, 12)
    configs = [(100, 0), (1000, 500)] if not smoke else [(100, 0), (300, 100)]
    results = [run_config(mc, idle, seconds, pairs) for mc, idle in configs]
    rows = [
        "| max_connections | idle connections | tps without | tps with probe | ratio (median) | ratios: quartiles "
        "(min … max) | probe rate "
        "| probe CPU share → 1 − share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    goals: list[tuple[str, str, bool | None]] = []
    for r in results:
        ratio = median(r["ratios"])
        rows.append(
            f"| {r['max_connections']} | {r['idle']} | {median(r['without']):,.0f} | {median(r['with']):,.0f} "
            f"| **{fmt(ratio, 3)}** "
            f"| {fmt(percentile(r['ratios'], 25), 3)} – {fmt(percentile(r['ratios'], 75), 3)} "
            f"({fmt(min(r['ratios']), 3)} … {fmt(max(r['ratios']), 3)}) "
            f"| {median(r['sample_rate_hz']):.1f} Hz | {r['probe_cpu_share'] * 100:.2f} % → "
            f"{fmt(1 - r['probe_cpu_share'], 3)} |"
        )
        goals.append(
            (
                f"pgbench -S with the probe at 20 Hz ≥ 0.99 × without "
                f"(max_connections {r['max_connections']}, {r['idle']} idle): median tps ratio",
                fmt(ratio, 3),
                ratio >= 0.99,
            )
        )
        by_cpu = 1 - r["probe_cpu_share"]
        goals.append(
            (
                f"the same, estimated from the probe's CPU share of the machine, 1 − share ≥ 0.99 "
                f"(max_connections {r['max_connections']}, {r['idle']} idle; "
                "cross-check free of neighbours' noise)",
                f"{fmt(by_cpu, 3)} ({r['probe_cpu_share'] * 100:.2f} % of {os.cpu_count()} cores)",
                by_cpu >= 0.99,
            )
        )
    md = [
        f"`pgbench -S -c 8 -j 2 -T {seconds}` (after `pgbench -i -s 1`) with and without poolbench's probe sampling "
        "every 50 ms (a `Probe` on a `SamplerThread` in the benchmark process, samples folded into a "
        f"`StepAccumulator`, as the runner does), {pairs} pairs in ABBA order; ratio = with ÷ without per pair. "
        "The idle connections are named like replicas (10 per application_name) so the probe's query groups them all. "
        "The last column is a noise-free cross-check: the CPU the probe used (its server backend plus its sampler "
        "thread) as a share of the machine's cores, which pgbench -S saturates; the throughput it can take away is "
        "about that share.",
        "",
        *rows,
    ]
    return Result("P2", "Probe cost", goals, "\n".join(md), {"configs": results})
