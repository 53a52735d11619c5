"""SIGINT, SIGTERM or SIGHUP at any moment of `poolbench run` leaves no process and no temporary directory.

What is left is looked up in /proc (a process whose command line, environment or working directory
points into the run's TMPDIR: the CLI, the launcher, replicas and their workers, PostgreSQL and its
backends, PgBouncer) and on disk, never in the runner's own records. Moments are found by watching
the run's files, not by sleeping: its directories appear and vanish as the server and the poolers
start and stop, and each replica's summary says its phase.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml

from poolbench.core.spec import PoolerSpec
from poolbench.local.embedded import LocalPostgres
from poolbench.local.pgbouncer import LocalPgBouncer
from poolbench.local.procs import Footprint, deferred_signals, spawn, temp_dir
from tests.conftest import ROOT, make_doc

pytestmark = pytest.mark.postgres

#: The stop signals' bits in /proc/PID/status masks (bit n-1 for signal n).
STOP_BITS = sum(1 << (s - 1) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP))


# -- /proc, read directly -----------------------------------------------------------------------------


def processes_of(tmpdir: Path) -> dict[int, str]:
    """Every live (not zombie) process whose command line, environment or working directory points
    into ``tmpdir``, with its command line."""
    root = str(tmpdir)
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat[stat.rindex(")") + 2] in "ZX":
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            continue
        if root in cmd or root in _cwd(entry) or root in _environ(entry):
            found[int(entry.name)] = cmd
    return found


def _cwd(proc: Path) -> str:
    try:
        return os.readlink(proc / "cwd")
    except OSError:
        return ""


def _environ(proc: Path) -> str:
    try:
        return (proc / "environ").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def blocked_stop_signals(pid: int) -> int:
    """The stop signals among a live process's blocked ones (bits of /proc/PID/status SigBlk)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16) & STOP_BITS
    raise AssertionError(f"no SigBlk for {pid}")


@contextmanager
def run_tmpdir() -> Iterator[Path]:
    # Not under tmp_path: pytest's base is 0700, so the server's user could not reach it, and poolbench
    # (which never changes a directory it did not create) would put the server's directory elsewhere.
    tmpdir = Path(tempfile.mkdtemp(prefix="poolbench-sigtest-"))
    os.chmod(tmpdir, 0o777)
    try:
        yield tmpdir
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def start_run(path: Path, tmpdir: Path, ignored: tuple[signal.Signals, ...] = ()) -> subprocess.Popen[str]:
    """``poolbench run`` as a terminal starts it: the stop signals at their defaults (whatever this test
    process inherited, e.g. under nohup), except those ``ignored`` as its starter would."""

    def dispositions() -> None:  # pragma: no cover - runs in the child between fork and exec
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN if sig in ignored else signal.SIG_DFL)

    return subprocess.Popen(
        [sys.executable, "-m", "poolbench.cli", "run", str(path)],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmpdir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=dispositions,
    )


def signal_and_check(proc: subprocess.Popen[str], sig: signal.Signals, tmpdir: Path, codes: tuple[int, ...]) -> str:
    """Send ``sig``; the run must end with one of ``codes``, no traceback, and when it ends, nothing of
    it left in /proc or under ``tmpdir``; when interrupted, its message says so and is true."""
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=90)
    assert proc.returncode in codes, err
    assert "Traceback" not in err
    assert processes_of(tmpdir) == {}, err
    assert list(tmpdir.iterdir()) == [], err
    if proc.returncode == 130:
        assert "left behind" not in err
        assert (
            "every process and temporary directory of the run is gone (checked in /proc and on disk)" in err
            or "interrupted; nothing of the run was running" in err
        ), err
    return err


# -- the direct benchmark ------------------------------------------------------------------------------


def wait_until(proc: subprocess.Popen[str], reached: Callable[[], bool], what: str) -> None:
    """Poll the run's files until ``reached``; fail, naming the moment, if the run ends first."""
    deadline = time.monotonic() + 120
    while not reached():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _out, err = proc.communicate()
            pytest.fail(f"the run never reached {what} (exit {proc.returncode}): {err[-2000:]}")
        time.sleep(0.02)


def holding(tmpdir: Path, name: str, step: int, variant: str = "") -> bool:
    """A replica of the step did its work and holds its connections (the ghosts) while the step goes on."""
    return "holding" in summaries(tmpdir, name, variant, step).values()


#: moment -> predicate on (tmpdir); "imports" is the moment right after the process started.
DIRECT_MOMENTS: dict[str, Callable[[Path], bool]] = {
    "imports": lambda tmpdir: True,
    "setup": lambda tmpdir: bool(dirs(tmpdir, "poolbench-run-")),  # the run's directory, the launcher starting
    "server": lambda tmpdir: bool(dirs(tmpdir, "poolbench-pg-")),  # PostgreSQL being prepared or started
    "step1": lambda tmpdir: holding(tmpdir, "sig", 1),
    "step2": lambda tmpdir: holding(tmpdir, "sig", 2),
}
# SIGINT at "imports" is left out: Python's own handler turns it into a KeyboardInterrupt before
# poolbench has a say. SIGTERM and SIGHUP there end the process before anything was started.
DIRECT = [
    (signal.SIGTERM, "imports"),
    (signal.SIGINT, "setup"),
    (signal.SIGTERM, "server"),
    (signal.SIGINT, "step1"),
    (signal.SIGTERM, "step2"),
    (signal.SIGHUP, "imports"),
    (signal.SIGHUP, "setup"),
    (signal.SIGHUP, "server"),
    (signal.SIGHUP, "step1"),
    (signal.SIGHUP, "step2"),
]


@pytest.mark.parametrize("sig,moment", DIRECT, ids=[f"{s.name}@{m}" for s, m in DIRECT])
def test_signal_cleans_up_everything(tmp_path: Path, sig: signal.Signals, moment: str) -> None:
    spec = make_doc(
        name="sig",
        steps=[2, 3],
        workload={"threads": 4, "iterations": 20, "holdSeconds": 2},
        postgres={"maxConnections": 30},
    )
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(spec))
    with run_tmpdir() as tmpdir:
        proc = start_run(path, tmpdir)
        wait_until(proc, lambda: DIRECT_MOMENTS[moment](tmpdir), moment)
        # 130: interrupted and cleaned up; -sig: the signal came before the handlers were installed
        # (still importing), when nothing had been started yet.
        signal_and_check(proc, sig, tmpdir, (130, -sig) if moment == "imports" else (130,))


def test_under_nohup_a_hangup_does_not_stop_the_run(tmp_path: Path) -> None:
    """Started with SIGHUP ignored (``nohup poolbench run``): a hangup in the middle of a step changes
    nothing, the run finishes both steps and cleans up as usual."""
    spec = make_doc(
        name="nohup",
        steps=[2, 3],
        workload={"threads": 4, "iterations": 20, "holdSeconds": 2},
        postgres={"maxConnections": 30},
    )
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(spec))
    with run_tmpdir() as tmpdir:
        proc = start_run(path, tmpdir, ignored=(signal.SIGHUP,))
        wait_until(proc, lambda: holding(tmpdir, "nohup", 1), "step1")
        proc.send_signal(signal.SIGHUP)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
        assert "interrupted" not in err, err
        assert "Verdict:" in out, out
        assert processes_of(tmpdir) == {}, err
        assert list(tmpdir.iterdir()) == [], err


# -- pooled variants, worker processes, a search, a measured rollout: at moments the run shows ------------

POOLED = {"poolMode": "transaction", "defaultPoolSize": 2, "replicas": 2}
SESSION = {"poolMode": "session", "defaultPoolSize": 8}
WORKLOAD = {"threads": 2, "iterations": 4, "holdSeconds": 1, "statement": "SELECT pg_sleep(0.05)"}

#: name -> (spec fields, the pooled first variant's last step as (index, replicas)). Every scenario runs a
#: pooled variant ("tx", two PgBouncer instances) and then another pooled one ("ses"), so a signal can
#: land while a pooler starts, serves, and stops between variants and at the end of the run.
SCENARIOS: dict[str, tuple[dict[str, Any], tuple[int, int]]] = {
    "pooled": ({"steps": [1, 2]}, (2, 2)),
    "processes": ({"steps": [1], "workload": {**WORKLOAD, "processes": 2}}, (1, 1)),
    # The pooled variant fits far beyond the search's max, so its search probes the max once.
    "search": ({"steps": {"search": {"min": 1, "max": 2}}}, (1, 2)),
    # One step of 1 replica, then the rolling update: 1 old replica and 1 surge pod beside it.
    "rollout": ({"steps": [1], "rollout": {"maxSurge": 1, "measure": True}}, (2, 2)),
}


def scenario_doc(name: str) -> dict[str, Any]:
    fields, _ = SCENARIOS[name]
    return make_doc(
        name=f"sig{name[:3]}",
        postgres={"maxConnections": 30},
        stepTimeoutSeconds=60,
        **{"workload": WORKLOAD, **fields},
        variants=[{"name": "tx", "pooler": POOLED}, {"name": "ses", "pooler": SESSION}],
    )


def dirs(tmpdir: Path, prefix: str) -> list[Path]:
    return list(tmpdir.glob(f"{prefix}*"))


def summaries(tmpdir: Path, name: str, variant: str, step: int) -> dict[str, str]:
    """Replica name -> phase, from the summaries the replicas of one step wrote so far."""
    phases = {}
    for path in tmpdir.glob(f"poolbench-run-*/pb-{name}-{variant + '-' if variant else ''}s{step}-r*.json"):
        try:
            phases[path.stem] = json.loads(path.read_text()).get("phase", "")
        except (OSError, ValueError):
            continue
    return phases


class Moments:
    """Predicates on the run's files, one per moment; some remember what they saw before."""

    def __init__(self, tmpdir: Path, name: str, last_tx_step: tuple[int, int]):
        self.tmpdir, self.name, self.last_tx_step = tmpdir, name, last_tx_step
        self.poolers_seen: set[Path] = set()

    def start(self) -> bool:
        """The server's directory exists: PostgreSQL is being prepared or started."""
        return bool(dirs(self.tmpdir, "poolbench-pg-"))

    def mid_step(self) -> bool:
        """A replica of the pooled variant's first step did its work and holds its connections (the
        ghosts) through PgBouncer while the step goes on."""
        return holding(self.tmpdir, self.name, 1, "tx")

    def between_variants(self) -> bool:
        """Every replica of the first variant's last step is done: the step ends, its pooler stops and
        the next variant's starts (at the latest, the second pooler's directory appears)."""
        index, replicas = self.last_tx_step
        phases = summaries(self.tmpdir, self.name, "tx", index)
        self.poolers_seen |= set(dirs(self.tmpdir, "poolbench-pgbouncer-"))
        return (len(phases) == replicas and all(p == "done" for p in phases.values())) or len(self.poolers_seen) >= 2

    def cleanup(self) -> bool:
        """Both variants' poolers came and went: the run is taking down the server and its directories."""
        now = set(dirs(self.tmpdir, "poolbench-pgbouncer-"))
        self.poolers_seen |= now
        return len(self.poolers_seen) >= 2 and not now and bool(dirs(self.tmpdir, "poolbench-pg-"))


#: moment -> the exit codes a signal then allows (at the end-of-run clean-up the run may have just finished).
MOMENT_CODES = {"start": (130,), "mid_step": (130,), "between_variants": (130,), "cleanup": (0, 130)}
SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Every moment of the plain pooled run with both signals; the other scenarios each moment once, the
# signal alternating so each moment and each scenario sees both.
MATRIX = [("pooled", moment, sig) for moment in MOMENT_CODES for sig in SIGNALS] + [
    (scenario, moment, SIGNALS[(i + j) % 2])
    for i, scenario in enumerate(["processes", "search", "rollout"])
    for j, moment in enumerate(MOMENT_CODES)
]


@pytest.mark.parametrize("scenario,moment,sig", MATRIX, ids=[f"{s}-{m}-{g.name}" for s, m, g in MATRIX])
def test_signal_at_a_moment_of_a_pooled_run_leaves_nothing(
    tmp_path: Path, scenario: str, moment: str, sig: signal.Signals
) -> None:
    doc = scenario_doc(scenario)
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(doc))
    with run_tmpdir() as tmpdir:
        proc = start_run(path, tmpdir)
        moments = Moments(tmpdir, doc["metadata"]["name"], SCENARIOS[scenario][1])
        wait_until(proc, getattr(moments, moment), moment)
        signal_and_check(proc, sig, tmpdir, MOMENT_CODES[moment])


def test_every_child_of_a_pooled_run_starts_with_no_stop_signal_blocked(tmp_path: Path) -> None:
    """PgBouncer, the launcher, the replicas and their worker processes, read from /proc while a
    pooled step runs (the server sets its own mask, so it proves nothing either way)."""
    doc = scenario_doc("processes")
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(doc))
    with run_tmpdir() as tmpdir:
        proc = start_run(path, tmpdir)
        moments = Moments(tmpdir, doc["metadata"]["name"], SCENARIOS["processes"][1])
        wait_until(proc, moments.mid_step, "mid_step")
        masks = {}
        for pid, cmd in processes_of(tmpdir).items():
            if pid == proc.pid or "postgres" in cmd.split()[0]:
                continue
            try:
                masks[pid] = (cmd, blocked_stop_signals(pid))
            except OSError:  # gone meanwhile
                continue
        signal_and_check(proc, signal.SIGINT, tmpdir, (130,))
    kinds = " ".join(cmd for cmd, _ in masks.values())
    assert "pgbouncer" in kinds, kinds
    assert "poolbench-workload-launcher" in kinds, kinds
    assert len(masks) >= 4, masks  # two PgBouncers, the launcher, the replica (and its workers)
    assert {pid: m for pid, m in masks.items() if m[1]} == {}


# -- the pieces: held signals, spawned children, PgBouncer's stop, the footprint ---------------------------


def test_a_signal_held_while_a_child_starts_arrives_after_it_is_recorded_and_the_child_has_a_clean_mask() -> None:
    got: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda s, f: got.append(s))
    children: list[subprocess.Popen[bytes]] = []
    try:
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            children.append(spawn(["sleep", "30"]))
            time.sleep(0.05)  # the handler had every chance to run, and was held
            assert got == []
        assert got == [signal.SIGINT]
        assert blocked_stop_signals(children[0].pid) == 0
    finally:
        signal.signal(signal.SIGINT, previous)
        for child in children:
            child.kill()
            child.wait()


def pooler(pg: LocalPostgres, **fields: Any) -> LocalPgBouncer:
    spec = PoolerSpec.model_validate({"poolMode": "transaction", "defaultPoolSize": 2, **fields})
    return LocalPgBouncer(
        spec, server_host=pg.host, server_port=pg.port, database="postgres", passwords={"postgres": "pw"}
    )


def test_pgbouncer_started_as_the_runner_does_exits_by_itself_when_stopped(local_pg: LocalPostgres) -> None:
    """Started while the runner holds signals, each instance still takes SIGINT/SIGTERM: one signalled
    here logs its safe shutdown and exits 0; stop() ends the other with its own exit status too, never
    SIGKILL's -9."""
    with deferred_signals():
        bouncer = pooler(local_pg, replicas=2)
    bouncer.start()
    processes = list(bouncer.processes)
    try:
        assert [blocked_stop_signals(p.pid) for p in processes] == [0, 0]
        root = bouncer.root
        assert root is not None
        os.killpg(processes[0].pid, signal.SIGINT)
        processes[0].wait(10)
        log = (root / "pgbouncer-0.log").read_text()
    finally:
        bouncer.stop()
    assert "got SIGINT, shutting down" in log, log
    assert processes[0].returncode == 0
    assert processes[1].returncode is not None, processes[1].returncode
    assert processes[1].returncode >= 0, processes[1].returncode
    assert not root.exists()


def test_stop_ends_pgbouncer_by_signal_even_with_a_client_holding_a_session(local_pg: LocalPostgres) -> None:
    """A session-mode client keeps its server connection: the safe shutdown would wait for it, so stop()
    follows with the immediate one; the instance still exits by itself, not by SIGKILL."""
    bouncer = pooler(local_pg, poolMode="session").start()
    processes = list(bouncer.processes)
    root = bouncer.root
    client = psycopg2.connect(
        host=bouncer.host, port=bouncer.ports[0], user="postgres", password="pw", dbname="postgres", connect_timeout=5
    )
    try:
        client.cursor().execute("SELECT 1")
        bouncer.stop()
    finally:
        client.close()
    assert processes[0].returncode is not None, processes[0].returncode
    assert processes[0].returncode >= 0, processes[0].returncode
    assert root is not None
    assert not root.exists()


def test_the_footprint_names_what_outlived_its_clean_up(tmp_path: Path) -> None:
    """A process that left its group (a new session) but works in the run's directory, and the directory
    itself, are both named; once they are gone, nothing is."""
    footprint = Footprint()
    with footprint.recording(), deferred_signals():
        root = temp_dir("poolbench-fp-", tmp_path)
        leader = spawn(["sh", "-c", "setsid sleep 60 & echo $!"], cwd=root, stdout=subprocess.PIPE)
    assert leader.stdout is not None
    escaped = int(leader.stdout.readline())
    leader.wait(10)
    try:
        left = footprint.leftovers()
        assert f"directory {root}" in left
        assert [x for x in left if x.startswith(f"process {escaped} ")], left
    finally:
        os.kill(escaped, signal.SIGKILL)
        shutil.rmtree(root)
    assert footprint.leftovers(wait=5) == []
