"""Against a real PostgreSQL started by the tests: the probe, the workload, the formulas."""

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

import psycopg2
import pytest

from poolbench.core.benchmark import full_status
from poolbench.core.spec import PoolBenchmark, parse_document
from poolbench.core.steploop import Progress
from poolbench.core.workload_env import workload_env
from poolbench.db.probe import Probe
from poolbench.local.embedded import LocalPostgres
from poolbench.local.runner import run_local
from tests.conftest import ROOT, make_doc

pytestmark = pytest.mark.postgres


def bench(name: str, steps: list[int], max_connections: int = 40, reserved: int = 3, **workload: Any) -> PoolBenchmark:
    wl = {"threads": 4, "iterations": 30, "holdSeconds": 1.5, "statement": "SELECT pg_sleep(0.05)", **workload}
    return parse_document(
        make_doc(
            name=name,
            steps=steps,
            workload=wl,
            stepTimeoutSeconds=60,
            sampling={"intervalMs": 20},
            postgres={"maxConnections": max_connections, "superuserReservedConnections": reserved},
        )
    )


def test_probe_sees_changes_in_autocommit_and_excludes_itself(local_pg: LocalPostgres) -> None:
    probe = Probe(lambda **kw: psycopg2.connect(**local_pg.connect_kwargs(), **kw), "probe-test-")
    probe.open()
    assert probe.read(0.0).total == 0
    held = [psycopg2.connect(**local_pg.connect_kwargs(), application_name=f"probe-test-{i}") for i in range(3)]
    cur = held[0].cursor()
    cur.execute("BEGIN; SELECT 1")  # idle in transaction
    sample = probe.read(1.0)
    assert sample.total == 3
    assert sample.by_state == {"idle": 2, "idle_in_transaction": 1}
    assert set(sample.by_app) == {"probe-test-0", "probe-test-1", "probe-test-2"}
    for c in held:
        c.close()
    time.sleep(0.2)
    assert probe.read(2.0).total == 0  # a new snapshot each read: autocommit
    probe.close()


def test_probe_records_a_gap_and_reconnects(local_pg: LocalPostgres) -> None:
    probe = Probe(lambda **kw: psycopg2.connect(**local_pg.connect_kwargs(), **kw), "gap-")
    probe.open()
    admin = psycopg2.connect(**local_pg.connect_kwargs())
    admin.autocommit = True
    admin.cursor().execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'poolbench-monitor'"
    )
    gap = probe.read(0.0)
    assert not gap.ok
    assert gap.error
    assert probe.read(0.1).ok
    assert probe.reconnects == 1
    admin.close()
    probe.close()


def test_workload_serves_metrics_and_writes_a_summary(local_pg: LocalPostgres, tmp_path: Path) -> None:
    spec = bench("m", [1], threads=3, iterations=20, holdSeconds=1.0).spec
    summary = tmp_path / "summary.json"
    env = {
        **os.environ,
        **workload_env(spec),
        **local_pg.client_env(),
        "POOLBENCH_APP_NAME": "metrics-r0",
        "POOLBENCH_SUMMARY_PATH": str(summary),
        "POOLBENCH_METRICS_PORT": "19187",
    }
    proc = subprocess.Popen([sys.executable, "-m", "workload"], env=env, cwd=ROOT)
    body = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and 'poolbench_phase{poolbench_phase="holding"} 1.0' not in body:
        with contextlib.suppress(OSError):
            body = urllib.request.urlopen("http://127.0.0.1:19187/metrics", timeout=1).read().decode()
        time.sleep(0.05)
    assert 'poolbench_attempts_total{outcome="ok"} 60.0' in body
    assert "poolbench_pool_checked_out 0.0" in body
    assert "poolbench_pool_overflow" in body
    assert "poolbench_pool_peak_checked_out 3.0" in body
    assert proc.wait(30) == 0
    data = json.loads(summary.read_text())
    assert data["phase"] == "done"
    assert data["outcomes"]["ok"] == 60
    assert data["peakCheckedOut"] == 3


def test_default_queuepool_keeps_ghosts() -> None:
    # 2 replicas × min(8 threads, 5 + 10) = 16 peak; min(5, 8) = 5 ghosts each.
    status = run_local(bench("qp", [2], threads=8)).status
    step = status.variants[0].steps[0]
    assert step.outcome == "Passed", step.reason
    assert step.predicted_peak == 16
    assert step.peak_connections == 16
    assert step.idle_at_end == 10 == step.predicted_idle
    assert step.errors.total() == 0
    assert set(step.peak_by_replica.values()) == {8}
    assert step.oldest_idle_seconds >= 1.0


def test_pool_size_two_no_overflow_caps_each_replica_at_two() -> None:
    status = run_local(bench("ps2", [3], threads=6, engine={"poolSize": 2, "maxOverflow": 0})).status
    step = status.variants[0].steps[0]
    assert step.outcome == "Passed", step.reason
    assert step.peak_connections == 6 == step.predicted_peak
    assert set(step.peak_by_replica.values()) == {2}
    assert step.idle_at_end == 6


def test_nullpool_leaves_no_ghosts() -> None:
    status = run_local(bench("np", [2], threads=5, engine={"poolClass": "NullPool"})).status
    step = status.variants[0].steps[0]
    assert step.outcome == "Passed", step.reason
    assert step.idle_at_end == 0 == step.predicted_idle
    # NullPool closes per checkout; a closing backend can still be listed for a moment while the
    # replacement connects, so allow one lingering backend per replica above the prediction.
    assert 2 <= step.peak_connections <= step.predicted_peak + 2


def test_app_role_meets_reserved_slots_not_too_many_clients() -> None:
    # usable for a normal role: 20 - 3 reserved - 1 monitor = 16; 2 × 10 = 20 needed.
    b = bench(
        "app",
        [2],
        max_connections=20,
        threads=10,
        role="app",
        onError="count",
        engine={"poolSize": 10, "maxOverflow": 0},
        iterations=40,
        holdSeconds=2,
    )
    status = run_local(b).status
    step = status.variants[0].steps[0]
    assert step.outcome == "Failed"
    assert step.first_error_class == "reservedSlots"
    # A storm of concurrent connects can briefly hold the reserved slots' PGPROCs with backends that are
    # about to be refused, so a few "too many clients" may appear; reserved slots must dominate.
    assert step.errors.reserved_slots > 10 * step.errors.too_many_clients
    assert step.peak_connections <= 16
    assert step.crashed_replicas == 0  # onError count: the replicas keep going
    assert status.verdict is not None
    assert status.verdict.first_failing_replicas == 2


def test_superuser_meets_too_many_clients_and_crash_kills_the_replica() -> None:
    b = bench(
        "crash",
        [1, 3],
        max_connections=20,
        threads=10,
        onError="crash",
        engine={"poolSize": 10, "maxOverflow": 0},
        iterations=40,
        holdSeconds=2,
    )
    status = run_local(b).status
    first, second = status.variants[0].steps
    assert first.outcome == "Passed"
    assert first.idle_at_end == 10
    assert second.outcome == "Failed"
    assert second.errors.too_many_clients > 0
    assert second.errors.reserved_slots == 0
    assert second.first_error_class == "tooManyClients"
    assert second.crashed_replicas >= 1
    # crash: each thread stops at its first error and the replica dies (racing threads may each fail once)
    assert second.errors.total() <= 10 * second.crashed_replicas
    assert status.verdict is not None
    assert (status.verdict.max_safe_replicas, status.verdict.first_failing_replicas) == (1, 3)


def test_count_mode_keeps_counting() -> None:
    b = bench(
        "count",
        [3],
        max_connections=20,
        threads=10,
        onError="count",
        engine={"poolSize": 10, "maxOverflow": 0},
        iterations=40,
        holdSeconds=1,
    )
    step = run_local(b).status.variants[0].steps[0]
    assert step.outcome == "Failed"
    assert step.crashed_replicas == 0
    assert step.errors.too_many_clients > step.errors.total() - step.errors.too_many_clients
    assert step.queries > 0


def test_seed_reproduced_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    plot = tmp_path / "c.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "poolbench.cli",
            "run",
            str(ROOT / "manifests/examples/seed.yaml"),
            "--output",
            str(out),
            "--plot",
            str(plot),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    written = json.loads(out.read_text())["status"]
    assert "comparison" not in written  # left out at its default: a plain benchmark compares nothing
    status = full_status(written)
    (direct,) = status["variants"]  # a benchmark without spec.variants: one direct variant
    assert "steps" not in status
    assert direct["name"] == "direct"
    assert direct["verdict"] == status["verdict"]
    five, ten = direct["steps"]
    assert five["replicas"] == 5
    assert five["outcome"] == "Passed"
    assert sum(five["errors"].values()) == 0
    assert five["idleAtEnd"] >= 20
    assert ten["replicas"] == 10
    assert ten["outcome"] == "Failed"
    assert ten["errors"]["tooManyClients"] > 0
    assert five["sampleGaps"] == 0
    assert ten["sampleGaps"] == 0
    assert status["verdict"]["maxSafeReplicas"] == 5
    assert status["verdict"]["firstFailingReplicas"] == 10
    assert "Verdict" in proc.stdout
    assert "PoolBenchmark results (max_connections" in proc.stdout
    assert "Variants compared" not in proc.stdout
    assert plot.stat().st_size > 10_000


@pytest.mark.serial  # any run's directory in /tmp counts, a parallel test's too
def test_cleanup_leaves_nothing_behind() -> None:
    import glob

    import psutil

    me = psutil.Process()
    children_before = {c.pid for c in me.children(recursive=True)}
    dirs_before = set(glob.glob("/tmp/poolbench-*"))
    run_local(bench("clean", [1], threads=2, iterations=2, holdSeconds=0))
    assert set(glob.glob("/tmp/poolbench-*")) - dirs_before == set()
    left = [
        c
        for c in me.children(recursive=True)
        if c.pid not in children_before and c.is_running() and c.status() != psutil.STATUS_ZOMBIE
    ]
    assert left == []


def test_postgres_killed_mid_step_fails_the_step_and_the_run_goes_on() -> None:
    """In local mode: the server is killed under the load; it is brought back, the monitor
    reconnects, the step fails saying the database restarted, and the next step runs."""
    import signal as signals

    from poolbench.local.runner import LocalRunner

    b = bench("pgkill", [2, 1], threads=3, durationSeconds=4, holdSeconds=1, onError="count", iterations=None)
    b.spec.stop_on_failure = False
    killed: list[float] = []

    def progress(p: Progress) -> None:
        if p.step == 1 and p.step_elapsed > 1.5 and not killed and runner.pg and runner.pg.pid:
            os.killpg(runner.pg.pid, signals.SIGKILL)
            killed.append(p.step_elapsed)

    runner = LocalRunner(b, progress)
    status = runner.execute().status
    assert killed
    first, second = status.variants[0].steps
    assert first.outcome == "Failed"
    assert first.database_restarts == 1
    assert first.reason is not None
    assert first.reason.startswith("the database restarted")
    assert first.sample_gaps >= 1
    assert first.errors.other > 0  # the replicas saw their connections die
    assert second.outcome == "Passed", second.reason  # the server is back: the run went on
    assert status.verdict is not None
    assert "2 replicas failed with the database restarted during the step" in status.verdict.summary
