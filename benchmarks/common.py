"""Shared helpers: machine facts, statistics, a throwaway server, pgbench, process-tree memory."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from poolbench.local.embedded import LocalPostgres

ROOT = Path(__file__).resolve().parent.parent


def pg_bin() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from poolbench.local.embedded import pg_bin_dir

        return pg_bin_dir()


def pg_version() -> str:
    out = subprocess.run([str(pg_bin() / "postgres"), "--version"], capture_output=True, text=True).stdout
    return out.strip().replace("postgres (PostgreSQL) ", "")


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import sqlalchemy

    return {
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": model or platform.processor(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgres": pg_version(),
        "sqlalchemy": sqlalchemy.__version__,
        "psycopg2": dist_version("psycopg2-binary", "psycopg2"),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def dist_version(*names: str) -> str:
    """The installed version of the first of these distributions that is installed (psycopg2 ships as either)."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    values = sorted(values)
    if not values:
        return float("nan")
    k = max(0, min(len(values) - 1, int(round(p / 100 * len(values) + 0.5)) - 1))
    return values[k]


@contextmanager
def postgres(
    max_connections: int = 100, settings: dict[str, str] | None = None, reserved: int = 3
) -> Iterator[LocalPostgres]:
    """A throwaway server from poolbench's own LocalPostgres; always stopped and removed."""
    from poolbench.local.embedded import LocalPostgres

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pg = LocalPostgres(max_connections, reserved, dict(settings or {}))
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()


def client_env(pg: LocalPostgres) -> dict[str, str]:
    return {**os.environ, **pg.client_env(), "PGUSER": "postgres", "PGDATABASE": "postgres"}


# pgbench reports the rate without its first connects, or with them when it connects per transaction (-C).
TPS_RE = re.compile(r"tps = ([0-9.]+) \((?:without initial connection time|including reconnection times)\)")


def pgbench(pg: LocalPostgres, args: list[str], timeout: float = 300) -> str:
    cmd = [str(pg_bin() / "pgbench"), "-h", pg.host, "-p", str(pg.port), "-U", "postgres", *args, "postgres"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=client_env(pg))
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def pgbench_tps(pg: LocalPostgres, args: list[str], timeout: float = 300) -> float:
    out = pgbench(pg, args, timeout)
    m = TPS_RE.search(out)
    if not m:
        raise RuntimeError(f"no tps in pgbench output: {out[-500:]}")
    return float(m.group(1))


def proc_stats() -> Iterator[tuple[int, str, list[bytes]]]:
    """Every process's ``/proc/PID/stat``: its PID, its command name and the fields after ``pid (comm) ``
    (field 1 the parent's PID, 11-14 utime, stime, cutime, cstime, 21 the RSS in pages). Reads /proc
    directly: psutil took ~0.3 ms per process, a third of a core at a thousand processes."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        close = data.rindex(b")")
        yield int(entry.name), data[data.index(b"(") + 1 : close].decode(errors="replace"), data[close + 2 :].split()


def server_cpu_seconds(pg: LocalPostgres) -> float:
    """CPU seconds the server has used so far: the postmaster, every backend it has reaped, and the
    processes still running under it (a backend's time reaches its parent only once it has exited)."""
    assert pg.process is not None
    total = 0
    for pid, _, fields in proc_stats():
        if pid == pg.process.pid:
            total += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
        elif int(fields[1]) == pg.process.pid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class TreeMemory:
    """Samples the summed RSS (and PSS, which counts shared pages once) of process trees.

    One ``stat`` file per process gives the parent and the RSS (``proc_stats``). PSS needs ``smaps_rollup``,
    which is dearer, so it is read only every ``pss_every``-th sweep.
    """

    roots: list[int]
    interval: float = 0.5
    pss_every: int = 4
    #: Read PSS only on a plateau instead: the process count as at the sweep before and the RSS sum 2 % above
    #: the last PSS read's (reading thousands of ``smaps_rollup`` files takes seconds of CPU).
    pss_on_plateau: bool = False
    peak_rss: int = 0
    peak_pss: int = 0
    peak_procs: int = 0
    #: At the sweep of the peak PSS: command name → (PSS bytes, processes).
    peak_pss_by_command: dict[str, tuple[int, int]] = field(default_factory=dict)
    sweeps: int = 0
    sweep_seconds: float = 0.0  # time spent measuring (it costs CPU on a small machine)
    pss_reads: int = 0
    _last_procs: int = 0
    _pss_read_at_rss: int = 0
    _halt: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    PAGE = os.sysconf("SC_PAGE_SIZE")

    def _tree(self) -> dict[int, tuple[int, str]]:
        """pid → (RSS bytes, command name) for the roots and all their descendants."""
        parent: dict[int, int] = {}
        rss: dict[int, tuple[int, str]] = {}
        for pid, command, fields in proc_stats():
            parent[pid] = int(fields[1])
            rss[pid] = (int(fields[21]) * self.PAGE, command)
        children: dict[int, list[int]] = {}
        for pid, ppid in parent.items():
            children.setdefault(ppid, []).append(pid)
        found: dict[int, tuple[int, str]] = {}
        todo = [pid for pid in self.roots if pid in rss]
        while todo:
            pid = todo.pop()
            if pid not in found:
                found[pid] = rss[pid]
                todo.extend(children.get(pid, []))
        return found

    @staticmethod
    def _pss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
                for line in fh:
                    if line.startswith(b"Pss:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        return 0

    def sample(self) -> None:
        t = time.monotonic()
        tree = self._tree()
        rss = sum(r for r, _ in tree.values())
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_procs = max(self.peak_procs, len(tree))
        due = self.sweeps % self.pss_every == 0
        if self.pss_on_plateau:
            due = len(tree) == self._last_procs and rss > self._pss_read_at_rss * 1.02
        self._last_procs = len(tree)
        if due:
            self._pss_read_at_rss = rss
            self.pss_reads += 1
            by_command: dict[str, tuple[int, int]] = {}
            for pid, (_rss, command) in tree.items():
                pss, count = by_command.get(command, (0, 0))
                by_command[command] = (pss + self._pss(pid), count + 1)
            total = sum(p for p, _ in by_command.values())
            if total > self.peak_pss:
                self.peak_pss, self.peak_pss_by_command = total, by_command
        self.sweeps += 1
        self.sweep_seconds += time.monotonic() - t

    def _run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def start(self) -> TreeMemory:
        self._thread = threading.Thread(target=self._run, daemon=True, name="tree-memory")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(10)


def python_cmd() -> list[str]:
    return [sys.executable]


def fmt(x: float, digits: int = 2) -> str:
    if x != x:  # NaN
        return "n/a"
    return f"{x:.{digits}f}"


def mark(ok: bool | None) -> str:
    if ok is None:
        return "n/a"
    return "**met**" if ok else "**not met**"


@dataclass
class Result:
    """What one benchmark returns to the report."""

    key: str
    title: str
    goals: list[tuple[str, str, bool | None]]  # (goal, measured, met)
    markdown: str
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class Stopwatch:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.t0
