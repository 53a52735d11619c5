"""The replica's timings against a real PostgreSQL: checkout wait, statement latency, the work's span.

Each test runs ``python -m workload`` as the runner does (environment only) and reads its summary;
one scrapes its Prometheus histograms during the hold and proves them equal to the summary's.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from poolbench.core.histogram import Histogram, parse_buckets
from poolbench.local.procs import free_port
from poolbench_operator.podstate import parse_metrics
from tests.conftest import ROOT

pytestmark = pytest.mark.postgres


def replica_env(
    local_pg: Any,
    tmp_path: Path,
    *,
    threads: int,
    statement: str,
    iterations: int,
    engine: dict[str, Any],
    on_error: str = "count",
    hold: float = 0.2,
    app_name: str = "measures-r0",
    metrics_port: int | None = None,
) -> dict[str, str]:
    env = {
        **os.environ,
        **local_pg.client_env(),
        "PGUSER": "postgres",
        "PGDATABASE": "postgres",
        "POOLBENCH_THREADS": str(threads),
        "POOLBENCH_STATEMENT": statement,
        "POOLBENCH_ITERATIONS": str(iterations),
        "POOLBENCH_HOLD_SECONDS": str(hold),
        "POOLBENCH_ON_ERROR": on_error,
        "POOLBENCH_ENGINE": json.dumps({"poolClass": "QueuePool", **engine}),
        "POOLBENCH_APP_NAME": app_name,
        "POOLBENCH_SUMMARY_PATH": str(tmp_path / "summary.json"),
        "POOLBENCH_EXIT_AFTER_HOLD": "true",
    }
    if metrics_port:
        env["POOLBENCH_METRICS_PORT"] = str(metrics_port)
    return env


def run_replica(env: dict[str, str], expect_exit: int = 0) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "workload"], env=env, cwd=ROOT, timeout=60, capture_output=True, text=True
    )
    assert proc.returncode == expect_exit, proc.stderr[-2000:]
    data: dict[str, Any] = json.loads(Path(env["POOLBENCH_SUMMARY_PATH"]).read_text())
    return data


def hist(summary: dict[str, Any], key: str) -> Histogram:
    h = Histogram.from_json(summary[key])
    assert h.total == sum(c for _, c in parse_buckets(summary[key]["buckets"])), summary[key]  # else: malformed
    return h


@pytest.mark.serial
def test_threads_queue_behind_a_small_pool(local_pg: Any, tmp_path: Path) -> None:
    """8 threads × 5 statements of 0.1 s on 2 connections: the threads wait, 6 s at least in all.

    Two connections serve 8 × 0.5 s of work; the threads' finishing times add up to at least
    2 × (0.5 + 1 + 1.5 + 2) = 10 s, 4 s of which are their own statements: ≥ 6 s of waiting, a mean
    ≥ 150 ms per checkout, however the pool schedules. Not a median: QueuePool lets a thread that
    checks a connection in take it straight back (it holds the GIL; the woken waiter does not run
    yet), so a thread runs its statements back to back and most checkouts wait nothing, while the
    last threads wait seconds (e.g. counts [32, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 2, 4, 0, …]).
    """
    s = run_replica(
        replica_env(
            local_pg,
            tmp_path,
            threads=8,
            statement="SELECT pg_sleep(0.1)",
            iterations=5,
            engine={"poolSize": 2, "maxOverflow": 0},
        )
    )
    assert s["outcomes"]["ok"] == 40
    wait, latency = hist(s, "checkoutWaitMs"), hist(s, "latencyMs")
    assert wait.total == 40
    assert latency.total == 40
    assert wait.sum_ms / wait.total >= 100, wait  # ≥ 150 ms by the arithmetic above, less start-up stagger
    assert wait.max_ms >= 300, wait  # the last of 8 first statements starts after 3 rounds of 2
    assert latency.percentile(0.5) >= 100, latency
    assert latency.sum_ms > wait.sum_ms  # latency includes the wait
    assert latency.max_ms >= wait.max_ms


@pytest.mark.serial
def test_enough_connections_no_wait_and_throughput_from_the_work_span(local_pg: Any, tmp_path: Path) -> None:
    s = run_replica(
        replica_env(
            local_pg, tmp_path, threads=4, statement="SELECT pg_sleep(0.1)", iterations=5, engine={"poolSize": 4}
        )
    )
    ok = s["outcomes"]["ok"]
    assert ok == 20
    wait, latency = hist(s, "checkoutWaitMs"), hist(s, "latencyMs")
    assert wait.percentile(0.5) <= 2.5, wait  # only the 4 first checkouts connect
    assert latency.percentile(0.5) >= 100, latency
    started, ended = s["workStartedAt"], s["workEndedAt"]
    assert isinstance(started, float)
    assert isinstance(ended, float)
    assert ended > started
    throughput = ok / (ended - started)
    assert abs(throughput / (4 / 0.1) - 1) <= 0.2, (throughput, ended - started)


def test_prometheus_histograms_equal_the_summary(local_pg: Any, tmp_path: Path) -> None:
    port = free_port()
    env = replica_env(
        local_pg,
        tmp_path,
        threads=3,
        statement="SELECT pg_sleep(0.01)",
        iterations=10,
        engine={"poolSize": 2, "maxOverflow": 0},
        hold=2.0,
        metrics_port=port,
    )
    env["POOLBENCH_HISTOGRAM_EDGES_MS"] = "10.5"  # a limit: an edge on every replica, listed even when empty
    proc = subprocess.Popen([sys.executable, "-m", "workload"], env=env, cwd=ROOT)
    try:
        body, deadline = "", time.monotonic() + 30
        while time.monotonic() < deadline and 'poolbench_phase{poolbench_phase="holding"} 1.0' not in body:
            with contextlib.suppress(OSError):
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
            time.sleep(0.05)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert 'poolbench_phase{poolbench_phase="holding"} 1.0' in body
    assert "poolbench_statement_latency_seconds_count 30.0" in body
    assert 'poolbench_checkout_wait_seconds_bucket{le="+Inf"} 30.0' in body
    assert 'poolbench_statement_latency_seconds_bucket{le="0.0105"}' in body
    for name in (
        "poolbench_statement_latency_max_seconds",
        "poolbench_checkout_wait_max_seconds",
        "poolbench_work_started_timestamp_seconds",
        "poolbench_work_ended_timestamp_seconds",
    ):
        assert f"\n{name} " in body
    s = json.loads(Path(env["POOLBENCH_SUMMARY_PATH"]).read_text())
    scraped = parse_metrics(body)
    assert 10.5 in Histogram.from_json(s["latencyMs"]).extra_edges()
    assert 10.5 in scraped.latency.edges
    assert scraped.latency.counts == Histogram.from_json(s["latencyMs"]).counts
    assert scraped.latency.to_json() == s["latencyMs"]  # sum and max too (to the microsecond)
    assert scraped.checkout_wait.to_json() == s["checkoutWaitMs"]
    assert (scraped.work_started_at, scraped.work_ended_at) == (s["workStartedAt"], s["workEndedAt"])


def test_a_failed_checkout_is_a_wait_not_a_latency(local_pg: Any, tmp_path: Path) -> None:
    """One thread holds the only connection for 1 s; the other three give up after pool_timeout 0.2 s."""
    s = run_replica(
        replica_env(
            local_pg,
            tmp_path,
            threads=4,
            statement="SELECT pg_sleep(1)",
            iterations=1,
            engine={"poolSize": 1, "maxOverflow": 0, "poolTimeout": 0.2},
        )
    )
    assert s["outcomes"]["ok"] == 1, s["outcomes"]
    assert s["outcomes"]["poolTimeout"] == 3, s["outcomes"]
    wait, latency = hist(s, "checkoutWaitMs"), hist(s, "latencyMs")
    assert wait.total == 4
    assert latency.total == 1
    at_least_200 = sum(c for bound, c in zip(wait.edges, wait.counts, strict=True) if bound > 200)
    assert at_least_200 == 3, wait.counts
    assert wait.sum_ms >= 3 * 200
    assert wait.max_ms >= 200
    assert latency.max_ms >= 1000, latency.counts
    assert sum(c for bound, c in zip(latency.edges, latency.counts, strict=True) if bound < 1000) == 0, latency.counts


def test_summary_fits_a_termination_message_with_a_long_first_error(local_pg: Any, tmp_path: Path) -> None:
    statement = "DO $$BEGIN RAISE EXCEPTION '%', repeat('é', 5000); END$$"
    s_path = tmp_path / "summary.json"
    env = replica_env(
        local_pg,
        tmp_path,
        threads=4,
        statement=statement,
        iterations=3,
        engine={"poolSize": 1},
        on_error="crash",
        app_name="r" * 63,
    )
    s = run_replica(env, expect_exit=1)
    assert len(s_path.read_bytes()) <= 4096
    assert s["phase"] == "crashed"
    assert s["firstError"].startswith("éé")
    assert Histogram.from_json(s["checkoutWaitMs"]).total >= 1
    assert s["latencyMs"]["buckets"] == ""
    assert s["workStartedAt"] <= s["workEndedAt"]


def test_summary_json_shortens_the_free_texts_to_4096_bytes() -> None:
    """No engine connects here: the guard itself, with texts no real error reaches."""
    from poolbench.core.contracts.replica_env import WorkloadConfig
    from workload.replica import Replica

    cfg = WorkloadConfig.from_env({"POOLBENCH_APP_NAME": "n" * 5000, "POOLBENCH_THREADS": "2"})
    replica = Replica(cfg)
    try:
        replica.first_error = "é" * 5000  # 30,000 bytes as JSON
        text = replica.summary_json()
        data = json.loads(text)
        assert len(text.encode()) <= 4096
        assert data["firstError"] == ""
        assert data["replica"].startswith("nnn")
        assert data["latencyMs"] == Histogram().to_json()
        replica.cfg = WorkloadConfig.from_env({"POOLBENCH_APP_NAME": "r0"})
        replica.first_error = "é" * 5000
        data = json.loads(replica.summary_json())
        assert 300 < len(data["firstError"]) < 700
        assert data["replica"] == "r0"
    finally:
        replica.engine.dispose()
