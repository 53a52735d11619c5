"""P3 workload driver: one replica's queries per second against the plain SQLAlchemy app it stands for.

The headline anchor is what the seed app does (``engine.begin()`` + ``conn.execute(text(statement))`` in N
threads on one QueuePool sized for N), run as its own process (``python -m benchmarks.p3_workload plain N
SECONDS``) with the same statement, pool and duration as the replica: the replica must cost no more than
the app it imitates, measurement included. Raw psycopg2 and pgbench are shown for information (they skip
SQLAlchemy altogether).
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import psutil

from poolbench.core.contracts.metrics import ATTEMPTS_TOTAL, OUTCOME_LABEL
from poolbench.core.contracts.replica_env import EngineSettings, WorkloadConfig
from poolbench.local.procs import free_port

from .common import ROOT, Result, client_env, fmt, median, pgbench_tps, postgres

if TYPE_CHECKING:
    from poolbench.local.embedded import LocalPostgres

PLAIN_STATEMENT = "SELECT 1"
OK_RE = re.compile(rf'^{ATTEMPTS_TOTAL}\{{{OUTCOME_LABEL}="ok"\}} ([0-9.e+]+)$', re.M)


def _scrape(port: int) -> str:
    return cast(str, urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode())


def _ok(port: int) -> float:
    m = OK_RE.search(_scrape(port))
    return float(m.group(1)) if m else 0.0


def replica_config(n: int, seconds: float, name: str, port: int, summary: Path) -> WorkloadConfig:
    """N threads on a QueuePool of N for ``seconds``, as the plain app runs."""
    return WorkloadConfig(
        threads=n,
        statement=PLAIN_STATEMENT,
        duration_seconds=seconds,
        hold_seconds=0.0,
        on_error="count",
        engine=EngineSettings(pool_size=n, max_overflow=0),
        app_name=name,
        metrics_port=port,
        summary_path=str(summary),
        exit_after_hold=True,
    )


def replica_env(pg: LocalPostgres, n: int, seconds: float, name: str, port: int, summary: Path) -> dict[str, str]:
    return {**client_env(pg), **replica_config(n, seconds, name, port, summary).to_env()}


def measure_replicas(pg: LocalPostgres, replicas: int, n: int, warm: float, window: float) -> dict[str, float]:
    """Aggregate rate of ``replicas`` workload processes over a window where all of them run."""
    tmp = Path(tempfile.mkdtemp(prefix="pb-bench-p3-"))
    procs, ports = [], []
    try:
        for i in range(replicas):
            port = free_port()
            env = replica_env(pg, n, warm + window + 20, f"p3-r{i}", port, tmp / f"r{i}.json")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "workload"],
                    env=env,
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            ports.append(port)
        deadline = time.monotonic() + 30
        while True:  # every replica serves metrics and has run a statement
            try:
                if all(_ok(p) > 0 for p in ports):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("replicas did not start")
            time.sleep(0.05)
        time.sleep(warm)
        ps = [psutil.Process(p.pid) for p in procs]
        cpu1 = sum(sum(p.cpu_times()[:2]) for p in ps)
        t1, c1 = time.monotonic(), sum(_ok(p) for p in ports)
        time.sleep(window)
        t2, c2 = time.monotonic(), sum(_ok(p) for p in ports)
        cpu2 = sum(sum(p.cpu_times()[:2]) for p in ps)
        qps = (c2 - c1) / (t2 - t1)
        return {"qps": qps, "client_cpu_us": 1e6 * (cpu2 - cpu1) / max(1.0, c2 - c1)}
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)


def measure_raw(pg: LocalPostgres, n: int, seconds: float, mode: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks._raw", str(n), str(seconds), mode],
        env=client_env(pg),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"raw loop failed: {proc.stderr[-500:]}")
    return cast("dict[str, Any]", json.loads(proc.stdout))


def plain_main(n: int, seconds: float) -> int:
    """The seed app's shape, and nothing else: N threads, one engine, ``engine.begin()`` +
    ``conn.execute(text(statement))``. Prints JSON: the rate over a window that skips the first second
    (connects and warm-up) and the last half second, measured like ``benchmarks._raw``."""
    import threading

    from sqlalchemy import create_engine, text

    from ._raw import measure_window

    engine = create_engine(
        "postgresql+psycopg2://", pool_size=n, max_overflow=0, connect_args={"application_name": "p3-plain"}
    )
    counts = [0] * n
    stop = threading.Event()
    ready = threading.Barrier(n + 1)

    def worker(i: int) -> None:
        ready.wait()
        done = 0
        while not stop.is_set():
            with engine.begin() as conn:
                conn.execute(text(PLAIN_STATEMENT))
            done += 1
            counts[i] = done

    result = measure_window(n, seconds, worker, counts, stop, ready)
    engine.dispose()
    print(json.dumps(result))
    return 0


def measure_plain(pg: LocalPostgres, n: int, seconds: float) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.p3_workload", "plain", str(n), str(seconds)],
        env=client_env(pg),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"plain SQLAlchemy loop failed: {proc.stderr[-500:]}")
    return cast("dict[str, Any]", json.loads(proc.stdout))


def profile_hot_loop(pg: LocalPostgres, iterations: int) -> tuple[str, float]:
    """cProfile of one caller thread's loop (N=1, SELECT 1), in this process; returns the top entries."""
    from workload.replica import Replica

    cfg = replace(
        replica_config(1, 0, "p3-profile", 0, Path(os.devnull)),
        iterations=iterations,
        duration_seconds=None,
        summary_path=None,
    )
    env = client_env(pg)
    saved = {k: os.environ.get(k) for k in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE")}
    os.environ.update({k: env[k] for k in saved})
    try:
        replica = Replica(cfg)
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.runcall(replica.caller)
        elapsed = time.perf_counter() - t
        replica.engine.dispose()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(12)
    text = buf.getvalue()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.strip().startswith("ncalls")), 0)
    top = "\n".join(
        ln.replace(str(Path(sys.prefix)), "…").replace(str(ROOT) + "/", "") for ln in lines[start : start + 13]
    )
    return top, iterations / elapsed


def run(smoke: bool) -> Result:
    ns = [4] if smoke else [1, 8]
    reps = 1 if smoke else 3
    warm, window = (0.5, 1.5) if smoke else (1.0, 4.0)
    seconds = warm + window + 0.5
    rows: list[str] = []
    data: dict[str, Any] = {}
    goals: list[tuple[str, str, bool | None]] = []
    with postgres(max_connections=100) as pg:
        for n in ns:
            raw_txn, raw_auto, rep, rep_cpu, raw_cpu, plain, plain_cpu = [], [], [], [], [], [], []
            for _ in range(reps):  # alternate to spread noise evenly
                p = measure_plain(pg, n, seconds)
                plain.append(p["qps"])
                plain_cpu.append(p["client_cpu_us"])
                r = measure_replicas(pg, 1, n, warm, window)
                rep.append(r["qps"])
                rep_cpu.append(r["client_cpu_us"])
                raw = measure_raw(pg, n, seconds, "txn")
                raw_txn.append(raw["qps"])
                raw_cpu.append(raw["client_cpu_us"])
                raw_auto.append(measure_raw(pg, n, seconds, "autocommit")["qps"])
            ratios_plain = [a / b for a, b in zip(rep, plain, strict=True)]
            ratios_txn = [a / b for a, b in zip(rep, raw_txn, strict=True)]
            ratios_auto = [a / b for a, b in zip(rep, raw_auto, strict=True)]
            data[f"n{n}"] = {
                "replica": rep,
                "plain_sqlalchemy": plain,
                "raw_txn": raw_txn,
                "raw_autocommit": raw_auto,
                "ratio_plain": ratios_plain,
                "ratio_txn": ratios_txn,
                "ratio_autocommit": ratios_auto,
                "replica_client_cpu_us_per_query": rep_cpu,
                "plain_client_cpu_us_per_query": plain_cpu,
                "raw_txn_client_cpu_us_per_query": raw_cpu,
            }
            rows.append(
                f"| {n} | {median(rep):,.0f} | {median(plain):,.0f} | **{fmt(median(ratios_plain))}** "
                f"| {median(raw_txn):,.0f} | {fmt(median(ratios_txn))} "
                f"| {median(raw_auto):,.0f} | {fmt(median(ratios_auto))} | {median(rep_cpu):.0f} "
                f"| {median(plain_cpu):.0f} | {median(raw_cpu):.0f} |"
            )
            ratio_plain = median(ratios_plain)
            goals.append(
                (
                    f"one replica ≥ 0.95 × the plain SQLAlchemy app (N={n}, engine.begin() + "
                    "conn.execute(text('SELECT 1')), same pool and duration; median of "
                    f"{', '.join(fmt(r) for r in ratios_plain)})",
                    fmt(ratio_plain),
                    ratio_plain >= 0.95,
                )
            )
        top_n = max(ns)
        ratio = median(data[f"n{top_n}"]["ratio_txn"])
        goals.append(
            (
                f"one replica vs raw psycopg2 (N={top_n}, same BEGIN/SELECT 1/COMMIT per statement, no "
                "SQLAlchemy; information)",
                fmt(ratio),
                None,
            )
        )
        ratio_auto = median(data[f"n{top_n}"]["ratio_autocommit"])
        goals.append(
            (
                f"one replica vs raw psycopg2 in autocommit (N={top_n}, 1 round trip instead of 3; information)",
                fmt(ratio_auto),
                None,
            )
        )

        # Four replicas against pgbench with the same number of connections.
        n = 4 if smoke else 8
        clients = 4 * n
        script = Path(tempfile.mkdtemp(prefix="pb-bench-p3-")) / "select1.sql"
        script.write_text("SELECT 1;\n")
        txn_script = script.parent / "txn.sql"
        txn_script.write_text("BEGIN;\nSELECT 1;\nCOMMIT;\n")
        agg, pgb, pgb_txn = [], [], []
        pgbench_args = ["-n", "-c", str(clients), "-j", "2", "-T", str(max(2, int(window + warm)))]
        try:
            for _ in range(reps):
                agg.append(measure_replicas(pg, 4, n, warm, window)["qps"])
                pgb.append(pgbench_tps(pg, ["-f", str(script), *pgbench_args]))
                pgb_txn.append(pgbench_tps(pg, ["-f", str(txn_script), *pgbench_args]))
        finally:
            shutil.rmtree(script.parent, ignore_errors=True)
        agg_ratios = [a / b for a, b in zip(agg, pgb, strict=True)]
        data["aggregate"] = {
            "replicas": 4,
            "threads": n,
            "qps": agg,
            "pgbench_tps": pgb,
            "ratio": agg_ratios,
            "pgbench_txn_tps": pgb_txn,
        }
        txn_ratio = median([a / b for a, b in zip(agg, pgb_txn, strict=True)])
        agg_ratio = median(agg_ratios)
        goals.append(
            (
                f"4 replicas × {n} threads ≥ 0.3 × pgbench (-f SELECT 1, -c {clients} -j 2)",
                fmt(agg_ratio),
                agg_ratio >= 0.3,
            )
        )
        goals.append(
            (
                "4 replicas vs pgbench with the same BEGIN; SELECT 1; COMMIT; per statement (information)",
                fmt(txn_ratio),
                None,
            )
        )
        top, single_qps = profile_hot_loop(pg, 2000 if smoke else 20000)
    md = [
        "One replica (`python -m workload`, `SELECT 1`, N threads, QueuePool poolSize N maxOverflow 0, latency and",
        "checkout-wait histograms on) against the app it stands for: a plain SQLAlchemy script in its own process",
        "(`python -m benchmarks.p3_workload plain N SECONDS`: N threads, one engine with the same pool,",
        "`with engine.begin() as conn: conn.execute(text('SELECT 1'))`, nothing else). That ratio is the headline:",
        "the replica, measurement included, must not be slower than the seed app's own loop. For information, N raw",
        "psycopg2 threads, each with its own connection, in psycopg2's default mode (`execute` + `commit`: the same",
        "BEGIN, statement, COMMIT as `engine.begin()`) and in autocommit (one round trip instead of three).",
        f"Rates are medians of {reps} alternated runs, each over a {window:g} s window after {warm:g} s of warm-up.",
        "",
        "| N | replica q/s | plain SQLAlchemy q/s | replica ÷ plain | raw txn q/s | replica ÷ raw txn "
        "| raw autocommit q/s | replica ÷ raw autocommit | replica client CPU µs/query "
        "| plain client CPU µs/query | raw txn client CPU µs/query |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Four replicas × {n} threads: {median(agg):,.0f} q/s; pgbench (`-n -f select1.sql -c {clients} -j 2`, "
        f"autocommit): {median(pgb):,.0f} tps; ratio **{fmt(agg_ratio)}**. pgbench running the replicas' own "
        f"protocol (`BEGIN; SELECT 1; COMMIT;`, same clients): {median(pgb_txn):,.0f} tps; ratio {fmt(txn_ratio)}.",
        "",
        f"Profile of one caller thread's hot loop (cProfile, N=1, {single_qps:,.0f} q/s under the profiler; "
        "top entries by own time):",
        "",
        "```",
        top,
        "```",
    ]
    return Result("P3", "Workload driver", goals, "\n".join(md), data)


if __name__ == "__main__":  # python -m benchmarks.p3_workload plain N SECONDS: the anchor, in its own process
    if len(sys.argv) != 4 or sys.argv[1] != "plain":
        sys.exit("usage: python -m benchmarks.p3_workload plain N SECONDS")
    sys.exit(plain_main(int(sys.argv[2]), float(sys.argv[3])))
