"""poolbench's on-disk cache: entries stored atomically and verified before every use.

An entry is built in a private staging directory beside its place, recorded in a manifest (one line
per file: kind, mode, owner, size, path) and renamed into place, so a reader sees a whole entry or
none. Its users verify it before each use and discard a damaged one, then build it again: a bad
cache costs a rebuild, never a failed run. The cache is ``~/.cache/poolbench``, or
``$POOLBENCH_CACHE_DIR`` (``off`` disables it).
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from .procs import deferred_signals, temp_dir

CACHE_ENV = "POOLBENCH_CACHE_DIR"  # where the initdb template is kept; "off" runs initdb every time
#: Inside every cache entry: one line per file (kind, mode, owner, size, path), checked before each use.
MANIFEST = ".poolbench-manifest"


def remove_tree(path: Path) -> None:
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


def discard(path: Path) -> None:
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
        remove_tree(aside)
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


def read_manifest(entry: Path) -> tuple[dict[str, str], list[str]]:
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


def verified(entry: Path) -> bool:
    """The entry is a real directory whose contents are exactly what its manifest recorded."""
    try:
        if not stat.S_ISDIR(entry.lstat().st_mode):
            return False
        return read_manifest(entry)[1] == _inventory(entry)
    except (OSError, UnicodeDecodeError):
        return False


def store(entry: Path, fill: Callable[[Path], None], header: dict[str, str] | None = None) -> bool:
    """Build a cache entry in a private staging directory beside it, record its manifest, and rename
    it into place: atomic, a reader sees the whole entry or none. A bad entry in the way is
    discarded (``os.rename`` will not replace a non-empty directory); one that another run stored
    meanwhile is kept. Returns whether ``entry`` now holds a good copy. ``fill`` may raise."""
    staging: Path | None = None
    try:
        with deferred_signals():  # an interrupt never lands between creating and recording it
            staging = temp_dir(f".{entry.name}.", entry.parent)
        built = staging / "entry"
        fill(built)
        head = "".join(f"# {key}: {value}\n" for key, value in (header or {}).items())
        (built / MANIFEST).write_text(head + "\n".join(_inventory(built)) + "\n")
        for _attempt in range(3):
            try:
                os.rename(built, entry)
                return True
            except OSError:
                if verified(entry):
                    return True
                discard(entry)
        return False
    finally:
        if staging is not None:
            remove_tree(staging)


def cache_base() -> Path | None:
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


def copy_tree(src: Path, dst: Path, keep_owner: bool = True) -> None:
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
