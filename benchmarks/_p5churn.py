"""P5's churn: 5,000 idle client backends held, connection churn on top, the sampler and the server-log
reader running side by side; how far behind the log reader falls and how regular the sampler stays.

Three kinds of load on one server that logs every connection (``SERVER_LOG_SETTINGS``):
- the bulk: light holder processes (``benchmarks._hold``) with thousands of idle backends;
- the churn: ``pgbench -C`` (a connect and a disconnect per transaction), as fast as the server takes it;
- markers: one connection every 100 ms with its own application_name, the time its connect returned
  noted, so the reader's lag is the time from that return to the moment the reader has parsed the
  marker's ``connection authorized`` line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg2

from poolbench.core.sampling import Sample
from poolbench.core.serverlog import OPENED, SERVER_LOG_SETTINGS
from poolbench.db.probe import QUERY, Probe, SamplerThread
from poolbench.local.logtail import LogFile

from ._logread import TimelineReader
from .common import ROOT, TreeMemory, client_env, median, percentile, pg_bin, postgres, server_cpu_seconds

if TYPE_CHECKING:
    from poolbench.local.embedded import LocalPostgres

HOLD_APP = "pb-hold"
MARK_APP = "pb-mark-"
CHURN_SCRIPT = "SELECT 1;\n"

#: The probe's count read through the ``pg_stat_activity`` view, each idle age with its own clock reading.
VIEW_QUERY = """
SELECT state, application_name, count(*)::int,
       max(extract(epoch FROM clock_timestamp() - state_change)) FILTER (WHERE state = 'idle'),
       wait_event_type
  FROM pg_catalog.pg_stat_activity
 WHERE backend_type = 'client backend'
   AND pid <> pg_catalog.pg_backend_pid()
   AND state IS NOT NULL AND state <> 'starting'
   AND application_name LIKE $1
 GROUP BY state, application_name, wait_event_type
"""
#: The floor: the function under the view, every row counted and nothing else.
FUNCTION_ONLY = "SELECT count(*)::int FROM pg_catalog.pg_stat_get_activity(NULL) WHERE $1::text IS NOT NULL"
#: The read's forms compared, each prepared once as the probe prepares its own.
READ_FORMS = {"view": VIEW_QUERY, "probe": QUERY.replace("%s", "$1"), "function": FUNCTION_ONLY}
#: Reads of each form per stage.
COST_ROUNDS = 30


def read_costs(pg: LocalPostgres, rounds: int) -> dict[str, list[float]]:
    """Each form's read time (seconds, client side), the forms alternated round by round on one
    autocommit session (a fresh snapshot per read, as the probe's)."""
    conn = psycopg2.connect(**pg.connect_kwargs(), application_name="pb-read-cost")
    conn.autocommit = True
    times: dict[str, list[float]] = {name: [] for name in READ_FORMS}
    try:
        with conn.cursor() as cur:
            for name, sql in READ_FORMS.items():
                cur.execute(f"PREPARE {name}(text) AS {sql}")
            for k in range(rounds):
                order = list(READ_FORMS) if k % 2 == 0 else list(reversed(READ_FORMS))
                for name in order:
                    t = time.perf_counter()
                    cur.execute(f"EXECUTE {name}(%s)", ("%",))
                    cur.fetchall()
                    times[name].append(time.perf_counter() - t)
    finally:
        conn.close()
    return times


@dataclass
class ReaderThread:
    """Drains the log every ``poll`` seconds and feeds the timeline, noting when each marker was parsed
    and the CPU the reading cost."""

    follower: LogFile
    reader: TimelineReader
    poll: float
    seen_marker: dict[str, float] = field(default_factory=dict)
    lines: int = 0
    cpu: float = 0.0
    max_batch: int = 0
    line_lag: list[float] = field(default_factory=list)  # parse time − the line's own server time
    _halt: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open_count(self) -> int:
        with self._lock:
            return self.reader.open_count()

    def drain(self) -> None:
        cpu0 = time.thread_time()
        batch = self.follower.read_lines()
        with self._lock:
            events = self.reader.feed(batch)
        for event in events:
            if event.kind == OPENED and event.application_name.startswith(MARK_APP):
                now = time.time()
                self.seen_marker[event.application_name] = now
                self.line_lag.append(now - event.at)
        self.lines += len(batch)
        self.max_batch = max(self.max_batch, len(batch))
        self.cpu += time.thread_time() - cpu0

    def _run(self) -> None:
        while not self._halt.is_set():
            self.drain()
            self._halt.wait(self.poll)
        self.drain()

    def start(self) -> ReaderThread:
        self._thread = threading.Thread(target=self._run, daemon=True, name="log-reader")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(30)


class Markers(threading.Thread):
    """A connection every ``every`` seconds with its own name; the time each connect returned."""

    def __init__(self, pg: LocalPostgres, every: float) -> None:
        super().__init__(daemon=True, name="markers")
        self.pg, self.every = pg, every
        self.connected: dict[str, float] = {}
        self.failed = 0
        self.halt = threading.Event()

    def run(self) -> None:
        k = 0
        while not self.halt.is_set():
            name = f"{MARK_APP}{k:05d}"
            try:
                conn = psycopg2.connect(**self.pg.connect_kwargs(), application_name=name, connect_timeout=10)
                self.connected[name] = time.time()
                conn.close()
            except psycopg2.Error:
                self.failed += 1
            k += 1
            self.halt.wait(self.every)


def start_holders(pg: LocalPostgres, count: int, processes: int) -> list[subprocess.Popen[str]]:
    """``count`` idle backends from ``processes`` holders, opened in parallel; returns once all are open."""
    per = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
    holders = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks._hold", str(n), HOLD_APP],
            cwd=ROOT,
            env=client_env(pg),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in per
    ]
    for h in holders:
        assert h.stdout is not None
        reply = h.stdout.readline().strip()
        if not reply.startswith("ready"):
            stop_holders(holders)
            raise RuntimeError(f"holder: {reply or 'no answer'}")
    return holders


def stop_holders(holders: list[subprocess.Popen[str]]) -> None:
    for h in holders:
        if h.stdin is not None:
            h.stdin.close()
    for h in holders:
        try:
            h.wait(60)
        except subprocess.TimeoutExpired:
            h.kill()
            h.wait(5)


def churn(pg: LocalPostgres, clients: int, seconds: float, script: Path) -> subprocess.Popen[str]:
    cmd = [
        str(pg_bin() / "pgbench"),
        "-h",
        str(pg.root),  # the Unix socket: the cheaper connect
        "-p",
        str(pg.port),
        "-U",
        "postgres",
        "-n",
        "-C",
        "-f",
        str(script),
        "-c",
        str(clients),
        "-j",
        "2",
        "-T",
        str(int(seconds)),
        "postgres",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=client_env(pg))


def gaps(samples: list[Sample]) -> list[float]:
    times = [s.t for s in samples]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def run_churn(
    stages: tuple[int, ...], holders: int, seconds: float, interval: float, clients: int, poll: float
) -> dict[str, Any]:
    """``stages``: the idle backends held when the read's forms are compared, growing; the last is the
    bulk the churn runs beside."""
    held = stages[-1]
    max_connections = held + clients + 50
    with postgres(max_connections=max_connections, settings=SERVER_LOG_SETTINGS) as pg:
        script = Path(pg.root or ".") / "churn.sql"
        script.write_text(CHURN_SCRIPT)
        samples: list[Sample] = []
        read_seconds: list[float] = []  # each read's duration: from its start (``t``) to its arrival
        t0 = time.monotonic()

        def keep(sample: Sample) -> None:
            read_seconds.append(time.monotonic() - t0 - sample.t)
            samples.append(sample)

        probe = Probe(lambda **kw: psycopg2.connect(**pg.connect_kwargs(), connect_timeout=10, **kw))
        probe.open()
        reader = TimelineReader()
        monitor_pid = probe.backend_pid()
        assert monitor_pid is not None
        reader.exclude(monitor_pid)  # as the monitor does: its own session is not the workload's
        reading = ReaderThread(LogFile(pg.log_path), reader, poll).start()
        bulk: list[subprocess.Popen[str]] = []
        costs: dict[int, dict[str, list[float]]] = {}
        hold_seconds, opened = 0.0, 0
        try:
            for stage in stages:  # the holders' processes shared out in proportion to the backends they add
                t_hold = time.monotonic()
                bulk += start_holders(pg, stage - opened, max(1, round(holders * (stage - opened) / held)))
                hold_seconds += time.monotonic() - t_hold
                opened = stage
                costs[stage] = read_costs(pg, COST_ROUNDS)
        except BaseException:
            stop_holders(bulk)
            raise
        assert pg.process is not None
        memory = TreeMemory([pg.process.pid, *(h.pid for h in bulk)], interval=5.0, pss_on_plateau=True).start()
        sampler = SamplerThread(probe, interval, keep, t0)
        markers = Markers(pg, 0.1)
        try:
            sampler.start()
            time.sleep(2.0)  # quiet: the plateau of the bulk alone
            quiet_from, quiet_until = time.monotonic() - t0 - 1.0, time.monotonic() - t0
            open_quiet = reading.open_count()
            plateau = TreeMemory(memory.roots, pss_every=1)
            plateau.sample()  # PSS of the bulk once: the churn never lets the process count settle
            lines0, cpu0 = reading.lines, reading.cpu
            markers.start()
            t_churn, server_cpu0 = time.monotonic(), server_cpu_seconds(pg)
            bench = churn(pg, clients, seconds, script)
            out, err = bench.communicate(timeout=seconds + 120)
            churn_wall = time.monotonic() - t_churn
            time.sleep(0.2)  # the exited backends' CPU reaches the postmaster once it has reaped them
            server_cpu = server_cpu_seconds(pg) - server_cpu0
            if bench.returncode != 0:
                raise RuntimeError(f"pgbench -C failed: {err.strip()[-500:]}")
            churn_until = time.monotonic() - t0
            markers.halt.set()
            markers.join(15)
            time.sleep(max(1.0, 3 * poll))  # the reader drains the tail
            lines, cpu = reading.lines - lines0, reading.cpu - cpu0
            open_after_churn = reading.open_count()
        finally:
            sampler.stop()
            probe.close()
            markers.halt.set()
            stop_holders(bulk)
            memory.stop()
        deadline = time.monotonic() + 60  # thousands of backends take a while to exit
        while reading.open_count() > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        reading.stop()
        open_at_end = reading.open_count()
        exact_peak, _ = reader.peak()
        capture = pg.log_path.read_text(errors="replace")
    processed = int(_field(out, "number of transactions actually processed: "))
    lags = [reading.seen_marker[name] - t for name, t in markers.connected.items() if name in reading.seen_marker]
    loaded = [s for s in samples if quiet_until <= s.t <= churn_until]
    quiet = [s for s in samples if quiet_from <= s.t <= quiet_until and s.ok]
    quiet_reads = [d for s, d in zip(samples, read_seconds, strict=True) if quiet_from <= s.t <= quiet_until]
    loaded_reads = [d for s, d in zip(samples, read_seconds, strict=True) if quiet_until <= s.t <= churn_until]
    return {
        "held": held,
        "holders": holders,
        "read_costs": costs,
        "hold_seconds": hold_seconds,
        "clients": clients,
        "churn_seconds": churn_wall,
        "connects": processed,
        "connects_per_second": processed / churn_wall,
        "pgbench_tps": float(_field(out, "tps = ").split()[0]),
        "server_cpu_per_connect": server_cpu / max(1, processed + len(markers.connected)),
        "server_cpu_share": server_cpu / churn_wall / (os.cpu_count() or 1),
        "reader_poll": poll,
        "lines": lines,
        "reader_cpu": cpu,
        "lines_per_cpu_second": lines / cpu if cpu else float("nan"),
        "reader_cpu_share": cpu / churn_wall,
        "max_batch": reading.max_batch,
        "markers": len(markers.connected),
        "markers_seen": len(lags),
        "markers_failed": markers.failed,
        "lag": lags,
        "line_lag": reading.line_lag,
        "exact_open_quiet": open_quiet,
        "sampled_quiet": sorted({s.total for s in quiet}),
        "exact_peak": exact_peak,
        "open_after_churn": open_after_churn,
        "open_at_end": open_at_end,
        "sampled_peak": max((s.total for s in samples if s.ok), default=0),
        "samples": len(samples),
        "failed_reads": sum(1 for s in samples if not s.ok),
        "gaps_loaded": gaps(loaded),
        "reads_quiet": quiet_reads,
        "reads_loaded": loaded_reads,
        "sampled_during_churn_min": min((s.total for s in loaded if s.ok), default=0),
        "peak_rss": memory.peak_rss,
        "peak_pss": max(memory.peak_pss, plateau.peak_pss),
        "pss_by_command": plateau.peak_pss_by_command,
        "peak_procs": memory.peak_procs,
        "capture": capture,
    }


def _field(text: str, key: str) -> str:
    for line in text.splitlines():
        if line.startswith(key):
            return line[len(key) :]
    raise RuntimeError(f"no {key!r} in pgbench output: {text[-400:]}")


def replay(capture: str, connects_per_second: float | None, poll: float, workdir: Path) -> dict[str, Any]:
    """Write a captured log again into a fresh file at ``connects_per_second`` (None: as fast as the disk
    takes it) while a reader follows it; the reader's lag behind the writer and its CPU."""
    lines = [line + "\n" for line in capture.splitlines()]
    connects = sum(1 for line in lines if "connection authorized" in line)
    per_line = connects / len(lines)
    path = workdir / f"replay-{connects_per_second or 'max'}.log"
    path.touch()
    reading = ReaderThread(LogFile(path), TimelineReader(), poll)
    written: dict[str, float] = {}
    reading.start()
    t = time.monotonic()
    batch = 200
    with open(path, "a") as fh:
        for i in range(0, len(lines), batch):
            chunk = lines[i : i + batch]
            fh.write("".join(chunk))
            fh.flush()
            now = time.time()
            for line in chunk:
                if MARK_APP in line and "connection authorized" in line:
                    written[line.rsplit("application_name=", 1)[1].split()[0]] = now
            if connects_per_second:
                due = t + (i + len(chunk)) * per_line / connects_per_second
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
    write_seconds = time.monotonic() - t
    deadline = time.monotonic() + 60
    while reading.lines < len(lines) and time.monotonic() < deadline:
        time.sleep(0.01)
    caught_up = time.monotonic() - t
    reading.stop()
    lags = [reading.seen_marker[n] - w for n, w in written.items() if n in reading.seen_marker]
    return {
        "target": connects_per_second,
        "lines": len(lines),
        "connects": connects,
        "achieved_connects_per_second": connects / write_seconds,
        "caught_up_seconds": caught_up,
        "reader_cpu": reading.cpu,
        "lines_per_cpu_second": reading.lines / reading.cpu if reading.cpu else float("nan"),
        "lag": lags,
        "markers": len(written),
        "markers_seen": len(lags),
        "parsed_all": reading.lines == len(lines),
    }


def dist_ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (
        f"{median(values) * 1000:.0f} / {percentile(values, 99) * 1000:.0f} / {max(values) * 1000:.0f} ms "
        f"({len(values)})"
    )
