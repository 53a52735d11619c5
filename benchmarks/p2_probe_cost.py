"""P2 probe cost: pgbench select-only throughput with poolbench's probe sampling at 20 Hz ÷ without; and the
server log's cost: the same pgbench on a server that logs every connection and disconnection ÷ one that does not."""

from __future__ import annotations

import os
import re
import threading
import time
from typing import TYPE_CHECKING, Any

import psutil
import psycopg2

from poolbench.core.sampling import Sample, StepAccumulator
from poolbench.core.serverlog import SERVER_LOG_SETTINGS
from poolbench.db.probe import Probe, SamplerThread

from .common import TPS_RE, Result, fmt, median, percentile, pgbench, pgbench_tps, postgres, server_cpu_seconds

if TYPE_CHECKING:
    from poolbench.local.embedded import LocalPostgres

PREFIX = "pb-p2-"


class Sampling:
    """The probe as the local runner runs it: its own thread, samples folded into a step's peaks."""

    def __init__(self, pg: LocalPostgres, interval: float) -> None:
        self.acc = StepAccumulator(replicas=1)
        self.lock = threading.Lock()
        self.probe = Probe(lambda **kw: psycopg2.connect(**pg.connect_kwargs(), connect_timeout=30, **kw), PREFIX)
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
    with postgres(max_connections=max_connections, settings=SERVER_LOG_SETTINGS) as pg:
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


#: The same server without the two settings that write a line per connection and per disconnection.
UNLOGGED_SETTINGS = {**SERVER_LOG_SETTINGS, "log_connections": "off", "log_disconnections": "off"}
PROCESSED_RE = re.compile(r"number of transactions actually processed: (\d+)")
LOG_CASES = [
    ("persistent connections (-S -c 8)", ["-S", "-c", "8", "-j", "2", "-n"]),
    ("a connect per transaction (-S -C -c 8)", ["-S", "-C", "-c", "8", "-j", "2", "-n"]),
]


def timed_pgbench(pg: LocalPostgres, args: list[str]) -> tuple[float, float]:
    """pgbench's tps and the server's CPU seconds per transaction over the same run."""
    cpu0 = server_cpu_seconds(pg)
    out = pgbench(pg, args)
    time.sleep(0.2)  # the exited backends' CPU reaches the postmaster once it has reaped them
    cpu = server_cpu_seconds(pg) - cpu0
    tps, processed = TPS_RE.search(out), PROCESSED_RE.search(out)
    if not tps or not processed:
        raise RuntimeError(f"no tps in pgbench output: {out[-500:]}")
    return float(tps.group(1)), cpu / max(1, int(processed.group(1)))


def run_logging_cost(seconds: int, pairs: int) -> list[dict[str, Any]]:
    """Two servers side by side, the same but for the connection log; each case in ABBA pairs."""
    with postgres(settings=SERVER_LOG_SETTINGS) as logged, postgres(settings=UNLOGGED_SETTINGS) as unlogged:
        for pg in (logged, unlogged):
            pgbench(pg, ["-i", "-s", "1", "-q"])
            pgbench(pg, ["-S", "-c", "8", "-j", "2", "-T", "1", "-n"])  # warm the cache
        results = []
        for label, case in LOG_CASES:
            args = [*case, "-T", str(seconds)]
            runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
            for i in range(pairs):
                order = (False, True) if i % 2 == 0 else (True, False)  # ABBA: no order bias
                for logging in order:
                    runs[logging].append(timed_pgbench(logged if logging else unlogged, args))
            results.append(
                {
                    "case": label,
                    "tps_logged": [t for t, _ in runs[True]],
                    "tps_unlogged": [t for t, _ in runs[False]],
                    "ratios": [a[0] / b[0] for a, b in zip(runs[True], runs[False], strict=True)],
                    "cpu_per_txn_logged_us": median(c for _, c in runs[True]) * 1e6,
                    "cpu_per_txn_unlogged_us": median(c for _, c in runs[False]) * 1e6,
                }
            )
    return results


def logging_table(results: list[dict[str, Any]]) -> tuple[list[str], list[tuple[str, str, bool | None]]]:
    rows = [
        "| case | tps without the log | tps with the log | ratio (median) | ratios: quartiles (min … max) "
        "| server CPU per transaction without → with | CPU ratio (without ÷ with) |",
        "|---|---|---|---|---|---|---|",
    ]
    goals: list[tuple[str, str, bool | None]] = []
    for r in results:
        ratio = median(r["ratios"])
        cpu_ratio = r["cpu_per_txn_unlogged_us"] / r["cpu_per_txn_logged_us"]
        rows.append(
            f"| {r['case']} | {median(r['tps_unlogged']):,.0f} | {median(r['tps_logged']):,.0f} | **{fmt(ratio, 3)}** "
            f"| {fmt(percentile(r['ratios'], 25), 3)} – {fmt(percentile(r['ratios'], 75), 3)} "
            f"({fmt(min(r['ratios']), 3)} … {fmt(max(r['ratios']), 3)}) "
            f"| {r['cpu_per_txn_unlogged_us']:,.0f} → {r['cpu_per_txn_logged_us']:,.0f} µs | {fmt(cpu_ratio, 3)} |"
        )
        goals.append(
            (
                f"the server log's cost, {r['case']}: pgbench tps with log_connections/log_disconnections ÷ "
                "without (information)",
                f"{fmt(ratio, 3)} (server CPU per transaction ratio {fmt(cpu_ratio, 3)})",
                None,
            )
        )
    return rows, goals


def run(smoke: bool) -> Result:
    seconds, pairs = (2, 1) if smoke else (3, 12)
    configs = [(100, 0), (1000, 500)] if not smoke else [(100, 0), (300, 100)]
    results = [run_config(mc, idle, seconds, pairs) for mc, idle in configs]
    log_pairs = 2 if smoke else 8
    log_results = run_logging_cost(seconds, log_pairs)
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
    log_rows, log_goals = logging_table(log_results)
    goals += log_goals
    md = [
        "Every server here runs with the connection log on (`SERVER_LOG_SETTINGS`, as every server poolbench "
        "creates), unless said otherwise.",
        "",
        f"`pgbench -S -c 8 -j 2 -T {seconds}` (after `pgbench -i -s 1`) with and without poolbench's probe sampling "
        "every 50 ms (a `Probe` on a `SamplerThread` in the benchmark process, samples folded into a "
        f"`StepAccumulator`, as the runner does), {pairs} pairs in ABBA order; ratio = with ÷ without per pair. "
        "The idle connections are named like replicas (10 per application_name) so the probe's query groups them all. "
        "The last column is a noise-free cross-check: the CPU the probe used (its server backend plus its sampler "
        "thread) as a share of the machine's cores, which pgbench -S saturates; the throughput it can take away is "
        "about that share.",
        "",
        *rows,
        "",
        "**The server log's cost.** Two servers side by side, identical but for `log_connections` and "
        "`log_disconnections` (both with poolbench's `log_line_prefix` and `lc_messages=C`), the same pgbench on each "
        f"in turn, {log_pairs} pairs per case in ABBA order, {seconds} s a run; "
        "ratio = with the log ÷ without per pair. "
        "The server's CPU per transaction (postmaster and every backend, from /proc) is the cross-check free of "
        "neighbours' noise. With persistent connections the log writes nothing while pgbench runs; with a connect per "
        "transaction it writes four lines per connection (received, authenticated, authorized, disconnection).",
        "",
        *log_rows,
    ]
    return Result("P2", "Probe and server-log cost", goals, "\n".join(md), {"configs": results, "logging": log_results})
