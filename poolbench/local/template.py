"""The initdb template: initdb runs once per server build and environment, later runs copy its output.

initdb takes most of a second; copying its pristine (never started) output takes a fraction of that.
The template is a cache entry (``cache``) keyed by all that initdb's output depends on; one that fails
its checks, or whose copy fails, is discarded, and this run's initdb replaces it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

from .access import make_dirs
from .cache import MANIFEST, cache_base, copy_tree, discard, remove_tree, store, verified

LOCALE_ENV = (
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_COLLATE",
    "LC_MESSAGES",
    "LC_MONETARY",
    "LC_NUMERIC",
    "LC_TIME",
    "TZ",
)
PG_CONTROL_SIZE = 8192  # PG_CONTROL_FILE_SIZE: pg_control is always one 8 kB block


def template_dir(bin_dir: Path, run_as: str | None, initdb_args: list[str]) -> Path | None:
    """Where a pristine initdb'd data directory is cached, or None when caching is off.

    initdb takes most of a second; copying its result takes a fraction of that. The key holds all
    that initdb's output depends on: the server build (path, size and mtime of the binary), the
    arguments (``initdb_args``), the owner, the locale and time zone of the environment.
    """
    base = cache_base()
    if base is None:
        return None
    try:
        binary = (bin_dir / "postgres").stat()
    except OSError:
        return None
    key = [
        str(bin_dir.resolve()),
        str(binary.st_size),
        str(binary.st_mtime_ns),
        *initdb_args,
        run_as or str(os.geteuid()),
        os.path.realpath("/etc/localtime"),
        *(f"{name}={os.environ.get(name, '')}" for name in LOCALE_ENV),
    ]
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:20]
    return base / f"initdb-{digest}"


def template_ok(template: Path, uid: int) -> bool:
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
    return verified(template)


def copy_template(template: Path, data_dir: Path, uid: int) -> bool:
    """Copy the cached template into ``data_dir`` when it passes verification. One that fails (or
    whose copy fails) is discarded, so this run's initdb replaces it. Returns whether it was used."""
    if not os.path.lexists(template):
        return False
    if template_ok(template, uid):
        try:
            copy_tree(template, data_dir)
            (data_dir / MANIFEST).unlink()
            return True
        except (OSError, subprocess.CalledProcessError):
            if os.path.lexists(data_dir):
                remove_tree(data_dir)
    discard(template)
    return False


def store_template(data_dir: Path, template: Path) -> None:
    """Best effort: keep a copy of a fresh (never started) data directory for the next runs."""
    try:
        make_dirs(template.parent, 0o700)
        store(template, lambda built: copy_tree(data_dir, built))
    except (OSError, subprocess.CalledProcessError):
        pass
