"""``poolbench observe`` and ``plan --dsn`` against a real PostgreSQL with a real app: Debian's pgbench with
4 clients as role app, and 3 idle sessions of role other held open by the test.

The numbers are known in advance: max_connections 40 − 3 superuser_reserved − 2 reserved_connections = 35
usable for a normal role; the app peaks at 4 (pgbench -c 4 holds one backend per client, -C off); the
others at 3; the watch's own session is excluded from every count, so the headroom is 35 − 4 − 3 = 28.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import pytest
import yaml

from poolbench.local.embedded import LocalPostgres
from tests.conftest import ROOT, make_doc, stop_signals_at_defaults
from tests.test_live_db import PASSWORD, hold, scram_server

pytestmark = pytest.mark.postgres

PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"
POOLBENCH = str(ROOT / ".venv" / "bin" / "poolbench")
USABLE = 35


@pytest.fixture(scope="module")
def pg() -> Iterator[LocalPostgres]:
    server = scram_server()
    yield server
    server.stop()


def dsn(server: LocalPostgres, user: str = "watcher") -> str:
    return f"postgresql://{user}@{server.host}:{server.port}/postgres"


def env(password: str | None = PASSWORD) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    out["PGPASSFILE"] = "/nonexistent"  # no ~/.pgpass of the machine's
    if password is not None:
        out["PGPASSWORD"] = password
    return out


def start_pgbench(server: LocalPostgres, tmp_path: Path, seconds: int) -> subprocess.Popen[str]:
    """4 clients as role app, each with one backend for the whole run (no -C), a statement that sleeps."""
    script = tmp_path / "sleep.sql"
    script.write_text("SELECT pg_sleep(0.05);\n")
    args = [PGBENCH, "-n", "-f", str(script), "-c", "4", "-j", "1", "-T", str(seconds)]
    args += ["-h", server.host, "-p", str(server.port), "-U", "app", "postgres"]
    return subprocess.Popen(args, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_app_backends(server: LocalPostgres, count: int, bench: subprocess.Popen[str]) -> None:
    conn = psycopg2.connect(**server.connect_kwargs())
    conn.autocommit = True  # each read a fresh snapshot of pg_stat_activity
    try:
        with conn.cursor() as cur:
            for _ in range(200):
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'")
                row = cur.fetchone()
                if row is not None and row[0] == count:
                    return
                time.sleep(0.05)
    finally:
        conn.close()
    bench.kill()
    raise AssertionError(f"pgbench never held {count} backends: {bench.communicate()[0]}")


def command_lines(root: int) -> list[str]:
    """The command lines of ``root`` and every process under it, read from /proc."""
    out: list[str] = []
    try:
        procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for proc in procs:
        try:
            out.append(Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return out


def test_observe_counts_pgbench_and_the_other_tenants_and_never_shows_the_password(
    pg: LocalPostgres, tmp_path: Path
) -> None:
    others = hold(pg, "other", 3)
    # pgbench outlasts the watch however slowly the watch starts (a loaded machine), and is stopped after it.
    bench = start_pgbench(pg, tmp_path, seconds=120)
    try:
        wait_app_backends(pg, 4, bench)
        output = tmp_path / "watch.json"
        watch = subprocess.Popen(
            [POOLBENCH, "observe", "--dsn", dsn(pg), "--match", "usename=app", "--duration", "3"]
            + ["--interval", "100", "--output", str(output), "--plot", str(tmp_path / "watch.png")],
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen_lines: list[str] = []
        while watch.poll() is None:
            seen_lines += command_lines(watch.pid)
            time.sleep(0.1)
        stdout, stderr = watch.communicate()
        assert watch.returncode == 0, stderr
    finally:
        bench.terminate()
        bench.wait(30)
        for conn in others:
            conn.close()
    assert seen_lines, "the process list was read while observe ran"
    assert not [line for line in seen_lines if PASSWORD in line]
    document = output.read_text()
    for text in (stdout, stderr, document):
        assert PASSWORD not in text
    status = json.loads(document)
    obs = status["observation"]
    assert obs["appPeak"] == 4
    assert obs["pods"]["app@127.0.0.1 pgbench"]["peakConnections"] == 4
    assert obs["othersPeak"] == 3
    assert obs["othersPeakByOwner"] == [{"usename": "other", "applicationName": "other-held", "peak": 3}]
    # The watch's own session (role watcher) is in no count: the headroom is 35 − 4 − 3.
    assert obs["minHeadroom"] == USABLE - 4 - 3
    assert not [group for group in obs["pods"] if group.startswith("watcher@")]
    assert status["server"]["maxConnections"] == 40
    assert status["server"]["usableForNormalRole"] == USABLE
    assert status["answer"]["perPod"] == 4
    assert status["answer"]["others"] == 3
    # 35 − 3 = 32 left: 8 × 4 fit, 9 do not (no surge locally)
    assert (status["answer"]["safeAtRest"], status["answer"]["refusalsFrom"]) == (8, 9)
    assert "at your measured 4 per pod; 32 of 35 usable are left after 3 used by others" in stdout
    assert "headroom: at least 28 of 35 usable slots stayed free" in " ".join(stdout.split())
    assert (tmp_path / "watch.png").stat().st_size > 0


def test_ctrl_c_ends_the_watch_and_still_prints_and_saves_what_was_seen(pg: LocalPostgres, tmp_path: Path) -> None:
    others = hold(pg, "other", 3)
    output = tmp_path / "watch.json"
    try:
        watch = subprocess.Popen(
            [POOLBENCH, "observe", "--dsn", dsn(pg), "--duration", "600", "--interval", "100", "-o", str(output)],
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=stop_signals_at_defaults,
        )
        try:
            assert watch.stderr is not None
            first = watch.stderr.readline()  # the first progress line: the watch has read once
            assert first.startswith("watching "), first
            watch.send_signal(signal.SIGINT)
            stdout, stderr = watch.communicate(timeout=30)
        finally:
            watch.kill()  # a watch that did not end must not outlive this test (it would be the next one's)
            watch.wait()
    finally:
        for conn in others:
            conn.close()
    assert watch.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "interrupted after" in stdout
    status = json.loads(output.read_text())
    assert status["interrupted"] is True
    assert status["observation"]["reads"] >= 1
    # Without --match every client is a group: the 3 held sessions are one.
    assert status["observation"]["pods"]["other@127.0.0.1 other-held"]["peakConnections"] == 3


def test_a_watch_whose_session_is_ended_prints_what_it_saw_and_the_error(pg: LocalPostgres, tmp_path: Path) -> None:
    watch = subprocess.Popen(
        [POOLBENCH, "observe", "--dsn", dsn(pg), "--duration", "600", "--interval", "100"],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stderr is not None
        assert watch.stderr.readline().startswith("watching ")
        admin = psycopg2.connect(**pg.connect_kwargs())
        admin.autocommit = True
        try:
            with admin.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = 'poolbench-observe'"
                )
                assert cur.fetchone() == (1,)
        finally:
            admin.close()
        stdout, stderr = watch.communicate(timeout=30)
    finally:
        watch.kill()
        watch.wait()
    assert watch.returncode == 1, stderr
    assert "the watch ended early, a read failed" in stderr
    assert "Client backends on watcher@" in stdout  # what was seen is still printed
    assert "Traceback" not in stderr


def test_the_password_may_come_from_a_file(pg: LocalPostgres, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    done = run_cli("observe", "--dsn", dsn(pg), "--duration", "0.2", "--password-file", str(secret), password=None)
    assert done.returncode == 0, done.stderr
    assert "usable for a normal role" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr


def plan_file(tmp_path: Path, **more: Any) -> Path:
    """Per replica 2 connections (QueuePool 2 + 0, 2 threads), role app, maxSurge 1; the spec's postgres
    section says 100 slots: the live server's 40 must win."""
    doc = make_doc(
        "live",
        workload={"threads": 2, "role": "app", "engine": {"poolSize": 2, "maxOverflow": 0}},
        postgres={"maxConnections": 100},
        rollout={"maxSurge": 1},
        **more,
    )
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run_cli(*args: str, password: str | None = PASSWORD) -> subprocess.CompletedProcess[str]:
    return subprocess.run([POOLBENCH, *args], env=env(password), capture_output=True, text=True, timeout=120)


def test_plan_dsn_answers_with_the_live_limits_and_the_others(pg: LocalPostgres, tmp_path: Path) -> None:
    others = hold(pg, "other", 3)
    try:
        done = run_cli("plan", "--dsn", dsn(pg), "--match", "usename=app", "--json", str(plan_file(tmp_path)))
        text = run_cli("plan", "--dsn", dsn(pg), str(plan_file(tmp_path)))
    finally:
        for conn in others:
            conn.close()
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    assert answer["source"] == "live"
    assert answer["server"]["maxConnections"] == 40
    # 35 usable − 3 others = 32: 16 × 2 at rest; a rollout with 1 surge pod: (15 + 1) × 2 = 32
    assert (answer["usable"], answer["others"], answer["available"]) == (USABLE, 3, 32)
    assert (answer["safeAtRest"], answer["safeInRollout"], answer["refusalsFrom"]) == (16, 15, 16)
    assert answer["othersByOwner"] == [{"usename": "other", "applicationName": "other-held", "count": 3}]
    assert text.returncode == 0, text.stderr
    assert "not the spec's postgres section" in text.stdout
    assert "max_connections 40" in text.stdout
    assert "max safe replicas: 16; during a rolling update (maxSurge 1): 15" in text.stdout


def test_plan_dsn_counts_a_pooled_variant_in_what_the_others_leave(pg: LocalPostgres, tmp_path: Path) -> None:
    # One PgBouncer, pool 40, max_client_conn 100: 2 clients per replica. Its server connections, min(2 × N,
    # 40), must fit in 35 − 3 others = 32: 16 replicas (32), not 17 (34); in a rollout 15 + 1 surge (32).
    others = hold(pg, "other", 3)
    variants = [{"name": "direct"}, {"name": "tx", "pooler": {"poolMode": "transaction", "defaultPoolSize": 40}}]
    try:
        done = run_cli("plan", "--dsn", dsn(pg), "--json", str(plan_file(tmp_path, variants=variants)))
    finally:
        for conn in others:
            conn.close()
    assert done.returncode == 0, done.stderr
    pooled = json.loads(done.stdout)["variants"][1]
    assert (pooled["name"], pooled["available"]) == ("tx", 32)
    assert (pooled["safeAtRest"], pooled["safeInRollout"], pooled["refusalsFrom"]) == (16, 15, 16)


@pytest.mark.parametrize(
    ("args", "password", "words"),
    [
        (["--dsn", "{blind}"], PASSWORD, 'GRANT pg_monitor TO "blind";'),
        (["--dsn", "{watcher}"], "wrong-" + PASSWORD, "password authentication failed"),
        (["--dsn", "postgresql://watcher@127.0.0.1:1/postgres"], PASSWORD, "cannot connect to"),
        (["--dsn", "host=127.0.0.1 port"], PASSWORD, "--dsn is not a valid connection string"),
        (["--dsn", "postgresql://watcher:" + PASSWORD + "@127.0.0.1/postgres"], PASSWORD, "process list"),
        (["--dsn", "{watcher}", "--match", "user=app"], PASSWORD, "--match: unknown key 'user'"),
        (["--dsn", "{watcher}", "--password-file", "/nonexistent/pw"], None, "--password-file /nonexistent/pw"),
    ],
)
def test_each_refusal_is_one_line_exit_2_without_the_password(
    pg: LocalPostgres, args: list[str], password: str | None, words: str
) -> None:
    filled = [a.format(blind=dsn(pg, "blind"), watcher=dsn(pg)) for a in args]
    done = run_cli("observe", "--duration", "1", *filled, password=password)
    assert done.returncode == 2, done.stderr
    assert words in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    for secret in (PASSWORD, "wrong-" + PASSWORD):
        assert secret not in done.stderr + done.stdout


def test_plan_dsn_refuses_a_role_without_pg_monitor_with_the_grant(pg: LocalPostgres, tmp_path: Path) -> None:
    done = run_cli("plan", "--dsn", dsn(pg, "blind"), str(plan_file(tmp_path)))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        'poolbench: role "blind" cannot see other sessions\' state (it is not a member of pg_read_all_stats);'
        ' as a superuser, run: GRANT pg_monitor TO "blind";'
    )
