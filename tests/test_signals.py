"""SIGINT, SIGTERM or SIGHUP at any moment of `poolbench run` leaves no process and no temporary directory."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import ROOT, make_doc

pytestmark = pytest.mark.postgres

# Moments: during imports, start-up/initdb, while the server starts, in the first step, in the second step.
MOMENTS = [(signal.SIGTERM, 0.3), (signal.SIGINT, 0.8), (signal.SIGTERM, 1.6), (signal.SIGINT, 3.5),
           (signal.SIGTERM, 6.0), (signal.SIGHUP, 0.8), (signal.SIGHUP, 1.6), (signal.SIGHUP, 3.5),
           (signal.SIGHUP, 6.0)]


def leftovers(tmpdir: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            env = proc.environ() if "workload" in cmd else {}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if tmpdir in cmd or env.get("TMPDIR") == tmpdir:
            found.append(f"{proc.info['pid']}: {cmd}")
    return found


@pytest.mark.parametrize("sig,delay", MOMENTS, ids=[f"{s.name}@{d}s" for s, d in MOMENTS])
def test_signal_cleans_up_everything(tmp_path, sig, delay):
    # Not under tmp_path: pytest's base is 0700, so the server's user could not reach it, and poolbench
    # (which never changes a directory it did not create) would put the server's directory elsewhere.
    tmpdir = Path(tempfile.mkdtemp(prefix="poolbench-sigtest-"))
    os.chmod(tmpdir, 0o777)
    try:
        _run_and_signal(tmp_path, tmpdir, sig, delay)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _run_and_signal(tmp_path, tmpdir, sig, delay):
    spec = make_doc(name="sig", steps=[2, 3],
                    workload={"threads": 4, "iterations": 40, "holdSeconds": 3},
                    postgres={"maxConnections": 30})
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = start_run(path, tmpdir)
    time.sleep(delay)
    # 130: interrupted and cleaned up; 0: it had already finished; -sig: the signal came before the
    # handlers were installed (still importing), when nothing had been started yet.
    signal_and_check(proc, sig, tmpdir, (0, 130, -sig))


def start_run(path: Path, tmpdir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "poolbench.cli", "run", str(path)], cwd=ROOT,
                            env={**os.environ, "TMPDIR": str(tmpdir)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def signal_and_check(proc: subprocess.Popen[str], sig: signal.Signals, tmpdir: Path, codes: tuple[int, ...]) -> None:
    """Send ``sig``; the run must end with one of ``codes``, no traceback, no process and no file left."""
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode in codes, err
    assert "Traceback" not in err
    deadline = time.monotonic() + 10
    while leftovers(str(tmpdir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(str(tmpdir)) == []
    assert list(tmpdir.iterdir()) == []


POOLED_MOMENTS = [(signal.SIGINT, 2.5), (signal.SIGTERM, 4.5)]


@pytest.mark.parametrize("sig,delay", POOLED_MOMENTS, ids=[f"{s.name}@{d}s" for s, d in POOLED_MOMENTS])
def test_signal_during_a_pooled_variant_leaves_no_pgbouncer(tmp_path, sig, delay):
    """The PgBouncer processes (their config lives under TMPDIR, so they show in ``leftovers``) go too."""
    tmpdir = Path(tempfile.mkdtemp(prefix="poolbench-sigtest-"))
    os.chmod(tmpdir, 0o777)
    spec = make_doc(name="sigpool", steps=[2, 3], postgres={"maxConnections": 30},
                    workload={"threads": 4, "iterations": 40, "holdSeconds": 3},
                    variants=[{"name": "tx", "pooler": {"poolMode": "transaction", "defaultPoolSize": 3}}])
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(spec))
    try:
        proc = start_run(path, tmpdir)
        deadline = time.monotonic() + 30
        while not any("pgbouncer" in p for p in leftovers(str(tmpdir))) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any("pgbouncer" in p for p in leftovers(str(tmpdir))), "the pooler never started"
        time.sleep(delay - 2.0)
        signal_and_check(proc, sig, tmpdir, (0, 130))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
